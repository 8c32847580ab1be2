"""The sampler's processors against independent NumPy implementations of their definitions.

Definitions (see src/sampling/mod.rs for the order): penalties (repetition over prompt + output,
presence/frequency over output), greedy at temperature 0, else logits / temperature, top-k,
top-p (keep a token while the mass ranked before it is < p), min-p (p_i >= min_p * p_max), draw.
"""

import os

import numpy as np
import pytest

import ferrite

RNG = np.random.default_rng(20261122)


def random_logits(n, scale=3.0):
    return (RNG.standard_normal(n) * scale).astype(np.float32)


def kept(processed):
    return np.flatnonzero(np.isfinite(processed))


def softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def np_top_k(scaled, candidates, k):
    if k == 0 or k >= len(candidates):
        return candidates
    order = candidates[np.lexsort((candidates, -scaled[candidates]))]
    return np.sort(order[:k])


def np_top_p(scaled, candidates, p):
    """Kept set, and the tokens whose fate depends on rounding (mass before them within 1e-6 of p)."""
    if p >= 1.0:
        return candidates, np.array([], dtype=np.int64)
    probs = softmax64(scaled[candidates])
    order = np.lexsort((candidates, -probs))
    before = np.concatenate([[0.0], np.cumsum(probs[order])[:-1]])
    keep = candidates[order][before < p]
    ambiguous = candidates[order][np.abs(before - p) < 1e-6]
    return np.sort(keep), ambiguous


def np_min_p(scaled, candidates, min_p):
    if min_p <= 0:
        return candidates
    probs = softmax64(scaled[candidates])
    return np.sort(candidates[probs >= min_p * probs.max()])


def assert_same_set(got, want, ambiguous=()):
    diff = set(got.tolist()) ^ set(want.tolist())
    assert diff <= set(np.asarray(ambiguous).tolist()), f"differ on {sorted(diff)[:10]} ({len(diff)} tokens)"


@pytest.mark.parametrize("k", [1, 5, 50, 999, 0])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_top_k_matches_numpy(k, temperature):
    logits = random_logits(1000)
    out = ferrite.Sampler(1000, temperature=temperature, top_k=k).process(logits)
    want = np_top_k(logits.astype(np.float64) / temperature, np.arange(1000), k)
    np.testing.assert_array_equal(kept(out), want)
    np.testing.assert_allclose(out[want], logits[want].astype(np.float64) / temperature, rtol=1e-6)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("vocab,scale", [(500, 3.0), (5000, 0.5), (151936, 2.0)])
def test_top_p_matches_numpy(p, vocab, scale):
    # The flat 5000-token case has nuclei far larger than the sampler's partial sort (1024).
    logits = random_logits(vocab, scale)
    out = ferrite.Sampler(vocab, temperature=0.8, top_p=p).process(logits)
    want, ambiguous = np_top_p(logits.astype(np.float64) / 0.8, np.arange(vocab), p)
    assert_same_set(kept(out), want, ambiguous)
    assert len(kept(out)) >= 1


@pytest.mark.parametrize("min_p", [0.01, 0.1, 0.5, 0.95])
def test_min_p_matches_numpy(min_p):
    logits = random_logits(2000)
    out = ferrite.Sampler(2000, temperature=1.3, min_p=min_p).process(logits)
    scaled = logits.astype(np.float64) / 1.3
    want = np_min_p(scaled, np.arange(2000), min_p)
    probs = softmax64(scaled)
    ambiguous = np.flatnonzero(np.abs(probs / probs.max() - min_p) < 1e-6)
    assert_same_set(kept(out), want, ambiguous)


@pytest.mark.parametrize("seed", range(6))
def test_filters_compose_in_order(seed):
    # top-k, then top-p renormalized over the top-k survivors, then min-p over what is left.
    logits = random_logits(3000, 2.5)
    k, p, min_p, t = [(40, 0.9, 0.05, 0.7), (200, 0.5, 0.0, 1.0), (0, 0.8, 0.2, 1.5)][seed % 3]
    out = ferrite.Sampler(3000, temperature=t, top_k=k, top_p=p, min_p=min_p).process(logits)
    scaled = logits.astype(np.float64) / t
    c = np_top_k(scaled, np.arange(3000), k)
    c, ambiguous = np_top_p(scaled, c, p)
    c = np_min_p(scaled, c, min_p)
    assert_same_set(kept(out), c, ambiguous)


def np_penalize(logits, prompt, output, rep, presence, frequency):
    out = logits.astype(np.float64).copy()
    seen = sorted(set(prompt) | set(output))
    for t in seen:
        out[t] = out[t] / rep if out[t] > 0 else out[t] * rep
    ids, counts = np.unique(np.asarray(output, dtype=np.int64), return_counts=True)
    for t, c in zip(ids, counts):
        out[t] -= presence + frequency * c
    return out


@pytest.mark.parametrize("rep,presence,frequency", [(1.3, 0.0, 0.0), (1.0, 0.7, 0.0), (1.0, 0.0, 0.4), (0.8, -0.5, 0.25)])
def test_penalties_match_numpy(rep, presence, frequency):
    vocab = 300
    logits = random_logits(vocab)
    prompt = RNG.integers(0, vocab, 40).tolist()
    output = RNG.integers(0, vocab, 60).tolist()
    s = ferrite.Sampler(
        vocab, repetition_penalty=rep, presence_penalty=presence, frequency_penalty=frequency, prompt_token_ids=prompt
    )
    for t in output:
        s.accept(t)
    got = s.process(logits)
    want = np_penalize(logits, prompt, output, rep, presence, frequency)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_greedy_is_argmax_after_penalties():
    vocab = 400
    for _ in range(20):
        logits = random_logits(vocab)
        prompt = RNG.integers(0, vocab, 10).tolist()
        s = ferrite.Sampler(vocab, temperature=0.0, repetition_penalty=1.5, top_k=3, prompt_token_ids=prompt)
        want = int(np.argmax(np_penalize(logits, prompt, [], 1.5, 0.0, 0.0)))
        out = s.process(logits)
        np.testing.assert_array_equal(kept(out), [want])
        assert s.sample(logits) == want


def test_draws_follow_the_filtered_softmax():
    vocab = 12
    logits = random_logits(vocab, 1.0)
    s = ferrite.Sampler(vocab, temperature=0.9, top_k=8, top_p=0.9, seed=7)
    scaled = logits.astype(np.float64) / 0.9
    c = np_top_k(scaled, np.arange(vocab), 8)
    c, ambiguous = np_top_p(scaled, c, 0.9)
    assert len(ambiguous) == 0
    probs = np.zeros(vocab)
    probs[c] = softmax64(scaled[c])
    n = 20000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=vocab)
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    sigma = np.sqrt(n * probs * (1 - probs))
    assert np.all(np.abs(counts - n * probs) <= 5 * sigma + 1), (counts, n * probs)


def test_same_seed_same_tokens_different_seed_different_tokens():
    vocab = 1000
    rows = [random_logits(vocab, 1.0) for _ in range(100)]

    def draw(seed):
        s = ferrite.Sampler(vocab, temperature=1.0, seed=seed)
        return [s.sample(r) for r in rows]

    assert draw(123) == draw(123)
    assert draw(123) != draw(124)


def test_masked_logits_are_never_drawn():
    logits = random_logits(64)
    logits[::2] = -np.inf
    s = ferrite.Sampler(64, temperature=3.0, seed=1)
    assert all(s.sample(logits) % 2 == 1 for _ in range(300))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(min_p=-0.1),
        dict(min_p=1.1),
        dict(repetition_penalty=0.0),
        dict(temperature=float("nan")),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ferrite.Sampler(10, **kwargs)


def test_bad_rows_raise():
    s = ferrite.Sampler(10)
    with pytest.raises(ferrite.FerriteError, match="10"):
        s.sample(np.zeros(9, dtype=np.float32))
    bad = np.zeros(10, dtype=np.float32)
    bad[3] = np.nan
    with pytest.raises(ferrite.FerriteError, match="token 3"):
        s.sample(bad)
    with pytest.raises(ferrite.FerriteError, match="-inf"):
        s.sample(np.full(10, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        s.accept(10)
    with pytest.raises(ValueError, match="out of range"):
        ferrite.Sampler(10, prompt_token_ids=[3, -1])


# ---- the engine's draw (ferrite._ferrite._sample_rows): CPU and CUDA against NumPy ----

from ferrite._ferrite import _sample_rows  # noqa: E402

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def skip_without_cuda(device):
    if device == "cuda" and not ferrite.cuda_available():
        pytest.skip("no CUDA device")


def np_chain_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0, prompt=(), output=(), rep=1.0, presence=0.0, frequency=0.0):
    """The probabilities the chain draws from, by definition (float64)."""
    pen = np_penalize(logits, list(prompt), list(output), rep, presence, frequency)
    scaled = pen / temperature
    c = np.arange(len(logits))
    c = np_top_k(scaled, c, top_k)
    c, _ = np_top_p(scaled, c, top_p)
    c = np_min_p(scaled, c, min_p)
    probs = np.zeros(len(logits))
    probs[c] = softmax64(scaled[c])
    return probs


def chi_square_ok(counts, probs):
    """Pearson's chi-square over the kept tokens against the 99.9% quantile of its distribution
    (Wilson-Hilferty approximation); no drawn token may have probability 0."""
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    kept = probs > 0
    n = counts.sum()
    expected = n * probs[kept]
    stat = ((counts[kept] - expected) ** 2 / expected).sum()
    df = max(int(kept.sum()) - 1, 1)
    z = 3.09  # one-sided 99.9%
    q = df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3
    return stat, q


CHAIN_CASES = {
    "temperature": dict(temperature=0.9),
    "top_k": dict(temperature=1.2, top_k=7),
    "top_p": dict(temperature=0.8, top_p=0.7),
    "min_p": dict(temperature=1.0, min_p=0.08),
    "all_filters": dict(temperature=0.7, top_k=12, top_p=0.9, min_p=0.02),
    "penalties": dict(temperature=1.0, rep=1.4, presence=0.5, frequency=0.3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CHAIN_CASES))
def test_draws_follow_the_chain_by_chi_square(device, case):
    skip_without_cuda(device)
    kw = CHAIN_CASES[case]
    vocab = 40
    logits = np.random.default_rng(7).standard_normal(vocab).astype(np.float32) * 2
    prompt, output = [1, 2, 3, 5], [5, 5, 8, 13]
    n = 20_000
    probs = np_chain_probs(logits, prompt=prompt, output=output, **kw)
    args = dict(
        temperature=kw["temperature"],
        top_k=kw.get("top_k", 0),
        top_p=kw.get("top_p", 1.0),
        min_p=kw.get("min_p", 0.0),
        repetition_penalty=kw.get("rep", 1.0),
        presence_penalty=kw.get("presence", 0.0),
        frequency_penalty=kw.get("frequency", 0.0),
        prompt_token_ids=prompt,
        output_token_ids=output,
    )
    rows = np.repeat(logits[None, :], n, axis=0)
    tokens, _, _ = _sample_rows(rows, device=device, seeds=list(range(n)), draw_indices=[3] * n, **args)
    counts = np.bincount(tokens, minlength=vocab)
    stat, q = chi_square_ok(counts, probs)
    assert stat < q, (stat, q)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", ["flat", "ties"])
def test_top_p_without_top_k_on_a_large_flat_row_draws_from_the_whole_nucleus(device, row):
    """top-p alone (what OpenAI clients send) on rows of 151,936 logits where about half the
    vocabulary makes the nucleus: the GPU cuts it by radix selection over probability mass (step
    4b of sampling.cu), the CPU by sorting. 400 draws with different seeds must all lie inside
    NumPy's nucleus, and the draws' share outside its upper half (by probability) must match
    the mass there within 5 standard deviations: a cut that kept too little (or too
    much) of the nucleus fails one or the other. "ties": values from 16 levels only, so that the
    cut falls inside a run of equal logits; NumPy's nucleus takes the run's first tokens by id,
    the GPU's radix cut (which selects by value) all of it, so there a draw may also be any
    token of that run, and the share may be either rule's."""
    skip_without_cuda(device)
    rng = np.random.default_rng(21)
    vocab, n = 151_936, 400
    logits = (rng.standard_normal(vocab) * 0.6).astype(np.float32)
    if row == "ties":
        logits = np.round(logits * 4) / 4
    top_p = 0.6
    probs = np_chain_probs(logits, 1.0, top_p=top_p)
    kept = np.flatnonzero(probs)
    assert 0.2 * vocab < len(kept) < 0.8 * vocab, len(kept)
    with_ties = np.flatnonzero(logits >= logits[kept].min())
    assert (len(with_ties) > len(kept)) == (row == "ties"), "the row does not test what it says"
    # The upper half of NumPy's nucleus by probability; the draws' share outside it against the
    # mass there under either rule.
    upper = kept[np.argsort(-probs[kept], kind="stable")][: len(kept) // 2]
    shares = []
    for nucleus in (kept, with_ties):
        p_nucleus = np.exp(logits[nucleus].astype(np.float64) - logits.max())
        shares.append(p_nucleus[~np.isin(nucleus, upper)].sum() / p_nucleus.sum())
    rows = np.repeat(logits[None, :], n, axis=0)
    tokens, _, _ = _sample_rows(rows, device=device, seeds=list(range(n)), draw_indices=[1] * n, temperature=1.0, top_p=top_p)
    tokens = np.asarray(tokens)
    outside = tokens[~np.isin(tokens, with_ties)]
    assert len(outside) == 0, f"{len(outside)} draws outside the nucleus, e.g. token {outside[0]}"
    got = (~np.isin(tokens, upper)).mean()
    lo, hi = min(shares), max(shares)
    sigma = np.sqrt(max(hi * (1 - hi), lo * (1 - lo)) / n)
    assert lo - 5 * sigma < got < hi + 5 * sigma, (got, shares, sigma)
    if device == "cuda":
        # The same noise on the same logits: the GPU draws the CPU's tokens but where its draw
        # falls in the run of ties past NumPy's cut (8 % of the mass with ties, none without).
        cpu, _, _ = _sample_rows(rows, device="cpu", seeds=list(range(n)), draw_indices=[1] * n, temperature=1.0, top_p=top_p)
        agree = np.mean(tokens == np.asarray(cpu))
        w = np.exp(logits.astype(np.float64) - logits.max())
        extra = w[np.setdiff1d(with_ties, kept)].sum() / w[with_ties].sum()
        assert agree >= min(0.99, 1 - extra - 5 * np.sqrt(extra * (1 - extra) / n)), (agree, extra)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_draw_is_the_argmax_and_logprobs_are_the_log_softmax(device):
    skip_without_cuda(device)
    rng = np.random.default_rng(11)
    rows = (rng.standard_normal((6, 151936)) * 3).astype(np.float32)
    for temperature in (0.0, 0.7):
        tokens, lps, tops = _sample_rows(
            rows, device=device, seeds=list(range(6)), draw_indices=[0] * 6, temperature=temperature, logprobs=5
        )
        t = 1.0 if temperature == 0 else temperature
        for row, tok, lp, top in zip(rows, tokens, lps, tops):
            scaled = row.astype(np.float64) / t
            lse = scaled.max() + np.log(np.exp(scaled - scaled.max()).sum())
            if temperature == 0:
                assert tok == int(np.argmax(row))
            assert lp == pytest.approx(scaled[tok] - lse, abs=1e-4)
            order = np.argsort(-scaled, kind="stable")[:5]
            assert [i for i, _ in top] == order.tolist()
            assert [v for _, v in top] == pytest.approx((scaled[order] - lse).tolist(), abs=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("logits", ["flat", "peaked", "masked"])
def test_gpu_and_cpu_draw_the_same_tokens_from_the_same_logits(logits):
    """64 rows of 151,936 logits. Flat rows (every token within reach) send top-p's nucleus past
    the tokens the GPU's chunk pass lists, so those rows take the full scan; peaked rows (a few
    dozen strong tokens, as a trained model's) are drawn from the chunk records. Masked rows keep
    34 finite tokens spread over the vocabulary (30 at random and 4 that the penalties touch, as
    a logit bias or a grammar leaves them): top-k 40 then keeps every one, and top-p's total comes
    from the chunks' lists, which hold them all (the chunk pass skips its sums of exp for a top-k
    of at most 64); so few well-spread tokens leave no boundary within rounding, and every draw
    must agree. Penalties on tokens spread over the whole vocabulary (every chunk applies its
    own)."""
    if not ferrite.cuda_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal((64, 151936)) * 2.5).astype(np.float32)
    if logits == "peaked":
        rows[:, rng.integers(0, 151936, 40)] += 12.0
    if logits == "masked":
        keep = np.zeros(rows.shape, dtype=bool)
        for r in range(len(rows)):
            keep[r, rng.choice(151936, 30, replace=False)] = True
        keep[:, [3, 8192, 70000, 151935]] = True  # the penalized tokens stay drawable
        rows[~keep] = -np.inf
    pen = dict(repetition_penalty=1.3, presence_penalty=0.4, prompt_token_ids=[3, 8191, 8192, 70000], output_token_ids=[151935, 8192, 40000])
    for kw in (
        dict(temperature=0.8),
        dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
        dict(temperature=1.0, top_p=0.9),
        dict(temperature=1.0, min_p=0.1),
        dict(temperature=0.7, top_k=20, **pen),
    ):
        seeds, idx = list(range(64)), list(range(64))
        cpu, _, _ = _sample_rows(rows, device="cpu", seeds=seeds, draw_indices=idx, **kw)
        gpu, _, _ = _sample_rows(rows, device="cuda", seeds=seeds, draw_indices=idx, **kw)
        agree = np.mean(np.asarray(cpu) == np.asarray(gpu))
        # The same noise on the same logits: only rounding at a filter boundary may differ, and
        # without filters nothing may (the GPU screens tokens with float noise but scores the
        # contenders with the host's float64 noise).
        assert agree >= (1.0 if kw.keys() == {"temperature"} or logits == "masked" else 0.95), (kw, agree)


def gpu_draws_in_process(rows_file, configs, draw_index, **env):
    """_sample_rows on the GPU for each of `configs` over the rows saved in `rows_file` (row i
    seeded i, every row at draw `draw_index`), in another process with `env` added to its
    environment (the device sampler reads its switches once a process): a list of [tokens,
    logprobs, top alternatives] a configuration."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys, numpy as np\n"
        "from ferrite._ferrite import _sample_rows\n"
        "rows = np.load(sys.argv[1]); n = len(rows); out = []\n"
        "for kw in json.loads(sys.argv[2]):\n"
        "    t, lp, top = _sample_rows(rows, device='cuda', seeds=list(range(n)), draw_indices=[int(sys.argv[3])] * n, **kw)\n"
        "    out.append([list(map(int, t)), lp, top])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(rows_file), json.dumps(configs), str(draw_index)],
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same_draws(got, want, kw, label, rows=slice(None), top_values=True):
    """got and want[rows], each (tokens, log-probabilities, top alternatives; the last two None
    unless asked for) of the same rows drawn under `kw`: the same tokens; where `kw` asks for
    log-probabilities, the same within 1e-5 and the same alternatives' ids (and their
    log-probabilities within 1e-5 unless `top_values` is False)."""
    tokens, lps, tops = got
    assert list(map(int, tokens)) == list(map(int, want[0][rows])), (label, kw)
    if "logprobs" in kw:
        w_lps, w_tops = want[1][rows], want[2][rows]
        np.testing.assert_allclose(lps, w_lps, atol=1e-5, err_msg=f"{label} {kw}")
        assert [[i for i, _ in r] for r in tops] == [[i for i, _ in r] for r in w_tops], (label, kw)
        if top_values:
            for top, w_top in zip(tops, w_tops):
                np.testing.assert_allclose([v for _, v in top], [v for _, v in w_top], atol=1e-5, err_msg=f"{label} {kw}")


@pytest.mark.cuda
def test_gpu_mass_pass_draws_what_one_block_scanning_the_row_draws(tmp_path):
    """Rows without top-k whose chunk records cannot settle the draw go to the mass pass:
    sample_mass bins each chunk's probability mass (fixed point) and Gumbel winners in blocks of
    their own, and a second sample_rows launch draws from those bins. Its draws must be the
    one-block scan's, bit for bit (the same integer sums, the same float64 noise): against
    FERRITE_CUDA_SAMPLE_MASS=0 (those rows scanned by the block that read their records) and
    FERRITE_CUDA_SAMPLE_CHUNKS=0 (every row scanned), each in another process. Flat rows, whose
    nucleus is over a fifth of the vocabulary (the records list at most 30 x 64 tokens, so these
    rows cannot be settled and must take the pass), rows of 16 levels (the cut inside a run of
    ties), and peaked rows in the same launches (settled by their records); top-p alone, min-p
    alone, both, top-p with penalties, and top-p with log-probabilities and alternatives. The
    process's count shows that each launch took the pass. Rows cut into 30 chunks of 5,120
    (FERRITE_CUDA_SAMPLE_CHUNK=5120, another process) and launches of one to four of the rows must
    draw the same."""
    if not ferrite.cuda_available():
        pytest.skip("no CUDA device")
    from ferrite._ferrite import _cuda_counters, _sample_rows

    rng = np.random.default_rng(31)
    vocab = 151_936
    flat = (rng.standard_normal((4, vocab)) * 0.6).astype(np.float32)
    tied = np.round(flat * 4) / 4
    peaked = flat.copy()
    peaked[:, rng.integers(0, vocab, 30)] += 12.0
    rows = np.concatenate([flat, tied, peaked]).astype(np.float32)
    # The premise: top-p 0.6 at T 1 keeps over a fifth of a flat row (NumPy's nucleus).
    probs = np_chain_probs(flat[0], 1.0, top_p=0.6)
    assert np.count_nonzero(probs) > 0.2 * vocab
    np.save(tmp_path / "rows.npy", rows)
    n = len(rows)
    configs = [
        dict(temperature=1.0, top_p=0.6),
        dict(temperature=0.7, top_p=0.95),
        dict(temperature=1.0, min_p=0.05),
        dict(temperature=1.0, top_p=0.9, min_p=0.3),
        dict(temperature=0.9, top_p=0.8, repetition_penalty=1.3, presence_penalty=0.4,
             prompt_token_ids=[3, 8191, 8192, 70000], output_token_ids=[151935, 8192, 40000]),
        dict(temperature=1.0, top_p=0.95, logprobs=5),
    ]
    before = _cuda_counters()["sample_mass_launches"]
    got = [_sample_rows(rows, device="cuda", seeds=list(range(n)), draw_indices=[5] * n, **kw) for kw in configs]
    assert _cuda_counters()["sample_mass_launches"] - before == len(configs)
    # Launches of fewer rows draw the same: four flat rows, four tied, one peaked, each launch alone.
    parts = [(0, 4), (4, 8), (8, 9)]
    for kw, whole in zip(configs, got):
        for lo, hi in parts:
            part = _sample_rows(rows[lo:hi], device="cuda", seeds=list(range(lo, hi)), draw_indices=[5] * (hi - lo), **kw)
            assert_same_draws(part, whole, kw, f"rows {lo}..{hi}", rows=slice(lo, hi), top_values=False)
    # Against the rows scanned, and against rows cut into 30 chunks of 5,120 instead of 19 of 8,192
    # (sampling.rs, small_batch_chunk_elems: the size launches of up to eight such rows take).
    for var, value in (("FERRITE_CUDA_SAMPLE_MASS", "0"), ("FERRITE_CUDA_SAMPLE_CHUNKS", "0"), ("FERRITE_CUDA_SAMPLE_CHUNK", "5120")):
        scanned = gpu_draws_in_process(tmp_path / "rows.npy", configs, 5, **{var: value})
        # (Rows settled by their records take the log-sum-exp from the chunks' sums, a scanned row
        # from its own: the same within float rounding.)
        for kw, whole, other in zip(configs, got, scanned):
            assert_same_draws(whole, other, kw, var)


@pytest.mark.cuda
def test_gpu_chunk_records_and_row_scans_agree_on_ties(tmp_path):
    """The device draws from its chunk records only where they settle the draw exactly, sorting
    only the listed entries at or above the k-th best key when a small top-k or only alternatives
    are asked for. Ties are where that could go wrong: 40 equal leaders (a top-k of 20 or 40 cuts
    inside or at them) and a second group of 30, spread over every chunk. The same rows scanned
    whole by one block each (FERRITE_CUDA_SAMPLE_CHUNKS=0, another process) must give the same
    tokens, alternatives and log-probabilities; so must the rows cut into 30 chunks of 5,120
    (FERRITE_CUDA_SAMPLE_CHUNK=5120, another process) and launches of one to four of them."""
    if not ferrite.cuda_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(11)
    rows = (rng.standard_normal((12, 151936)) * 0.5 - 2.0).astype(np.float32)
    for r in rows:
        ids = rng.permutation(151936)[:70]
        r[ids[:40]] = 6.0
        r[ids[40:]] = 5.0
    np.save(tmp_path / "rows.npy", rows)
    configs = [
        dict(temperature=0.8, top_k=20),
        dict(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05),
        dict(temperature=1.0, top_k=50, logprobs=5),
        dict(temperature=0.0, logprobs=5),
        dict(temperature=0.8, logprobs=3),
    ]
    scanned = gpu_draws_in_process(tmp_path / "rows.npy", configs, 3, FERRITE_CUDA_SAMPLE_CHUNKS="0")
    # Rows cut into 30 chunks of 5,120 instead of 19 of 8,192 (sampling.rs, small_batch_chunk_elems:
    # the size launches of up to eight such rows take) draw the same.
    small = gpu_draws_in_process(tmp_path / "rows.npy", configs, 3, FERRITE_CUDA_SAMPLE_CHUNK="5120")
    for kw, s_draws, c_draws in zip(configs, scanned, small):
        assert_same_draws(c_draws, s_draws, kw, "chunks of 5120", top_values=False)
    # The twelve rows in one launch, and in launches of one to four rows.
    for lo, hi in [(0, 12), (0, 4), (4, 6), (6, 7), (7, 10)]:
        for kw, s_draws in zip(configs, scanned):
            part = _sample_rows(rows[lo:hi], device="cuda", seeds=list(range(lo, hi)), draw_indices=[3] * (hi - lo), **kw)
            assert_same_draws(part, s_draws, kw, f"rows {lo}..{hi}", rows=slice(lo, hi))
