"""How much one fused q/k/v (and gate/up) f16 GEMM saves over separate ones (torch's cuBLAS)."""
import torch
def t(fn, n=200):
    for _ in range(10): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(n): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1e3
for name, hidden, kv, ff in [("7B", 3584, 512, 18944), ("0.5B", 896, 128, 4864)]:
    for rows in (8, 16, 64, 128):
        x = torch.randn(rows, hidden, device="cuda", dtype=torch.float16)
        # several copies so that launches read DRAM, not L2
        C = 6
        wq = [torch.randn(hidden, hidden, device="cuda", dtype=torch.float16) for _ in range(C)]
        wk = [torch.randn(kv, hidden, device="cuda", dtype=torch.float16) for _ in range(C)]
        wv = [torch.randn(kv, hidden, device="cuda", dtype=torch.float16) for _ in range(C)]
        wf = [torch.cat([a, b, c]) for a, b, c in zip(wq, wk, wv)]
        i = [0]
        def sep():
            j = i[0] = (i[0] + 1) % C
            for w in (wq[j], wk[j], wv[j]):
                torch.matmul(x, w.t(), out_dtype=torch.float32) if hasattr(torch.matmul, "out_dtype") else torch.mm(x, w.t()).float()
        def sep32():
            j = i[0] = (i[0] + 1) % C
            for w in (wq[j], wk[j], wv[j]):
                torch._addmm_activation if False else torch.mm(x, w.t())
        def fused():
            j = i[0] = (i[0] + 1) % C
            torch.mm(x, wf[j].t())
        a, b = t(sep32), t(fused)
        print(f"{name} rows {rows}: q,k,v apart {a:.1f} us, fused {b:.1f} us (f16 out)")
        del wq, wk, wv, wf
        wg = [torch.randn(ff, hidden, device="cuda", dtype=torch.float16) for _ in range(4)]
        wu = [torch.randn(ff, hidden, device="cuda", dtype=torch.float16) for _ in range(4)]
        wgu = [torch.cat([a, b]) for a, b in zip(wg, wu)]
        C = 4
        def sep2():
            j = i[0] = (i[0] + 1) % C
            torch.mm(x, wg[j].t()); torch.mm(x, wu[j].t())
        def fused2():
            j = i[0] = (i[0] + 1) % C
            torch.mm(x, wgu[j].t())
        print(f"{name} rows {rows}: gate,up apart {t(sep2):.1f} us, fused {t(fused2):.1f} us")
        del wg, wu, wgu
        torch.cuda.empty_cache()
