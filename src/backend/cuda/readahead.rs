//! Asking the kernel to read the CUDA libraries' files into the page cache ahead of their use, on
//! a machine whose disk cache is cold.
//!
//! A first load on a fresh H200 machine took 9.0 s, of which NVRTC 7.0 s, against 1.9 s (0.9 s)
//! with the same files already read once (docs/BENCHMARKS.md, 2026-12-04). Where the kernels come
//! prebuilt (`prebuilt`) NVRTC does not run, and cuBLAS (52 + 517 MiB, its handle made after the
//! kernels load) is the large library left to read. When the first CUDA context is made, a
//! thread locates NVRTC (loading it, as cudarc will anyway, and holding it while it looks: a
//! library that is only probed is closed again) and asks, with `posix_fadvise(WILLNEED)`, for
//! NVRTC's files and cuBLAS's beside them (the toolkit's lib folder, or pip's nvidia/cu13/lib):
//! cuBLAS's first where the prebuilt kernels serve the GPU, NVRTC's first where it will compile.
//! The reads go out in large requests while the kernels load, and nothing is copied. H200,
//! 2026-12-05, the libraries evicted from the page cache (`benches/bench_first_load.py --evict`):
//! a first load 1.96 -> 1.71 s with the prebuilt kernels, 6.92 -> 2.36 s where NVRTC compiles.
//!
//! `FERRITE_CUDA_READAHEAD=0` turns it off, `=cublas` or `=nvrtc` asks for those files only.
//! Errors are ignored: this only ever makes later reads faster.

use std::path::{Path, PathBuf};

/// What `FERRITE_CUDA_READAHEAD` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Off,
    Cublas,
    Nvrtc,
    All,
}

fn scope(value: Option<&str>) -> Scope {
    match value.map(str::trim) {
        Some("0") => Scope::Off,
        Some("cublas") => Scope::Cublas,
        Some("nvrtc") => Scope::Nvrtc,
        _ => Scope::All,
    }
}

/// Starts the background requests, once a process, for a GPU of compute capability `cc`.
pub fn start(cc: (u32, u32)) {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let scope = scope(std::env::var("FERRITE_CUDA_READAHEAD").ok().as_deref());
        if scope == Scope::Off {
            return;
        }
        let _ = std::thread::Builder::new().name("ferrite-readahead".into()).spawn(move || ask_ahead(scope, cc));
    });
}

/// Asks for NVRTC's files and cuBLAS's beside them, as `scope` says, cuBLAS's first where the
/// prebuilt kernels serve a GPU of compute capability `cc`; the files asked for, in order.
fn ask_ahead(scope: Scope, cc: (u32, u32)) -> Vec<PathBuf> {
    // SAFETY: loads the library cudarc will load by the same name; no symbol is called.
    let Some(nvrtc) = cudarc::get_lib_name_candidates("nvrtc").iter().find_map(|name| unsafe { libloading::Library::new(name) }.ok()) else {
        return Vec::new();
    };
    let maps = std::fs::read("/proc/self/maps").unwrap_or_default();
    let libs = libraries_in_maps(&String::from_utf8_lossy(&maps), &["libnvrtc.so"]);
    let mut cublas: Vec<PathBuf> = Vec::new();
    let mut nvrtc_files: Vec<PathBuf> = Vec::new();
    for lib in &libs {
        cublas.extend(siblings(lib, &["libcublas.so", "libcublasLt.so"]));
        nvrtc_files.push(lib.clone());
        nvrtc_files.extend(siblings(lib, &["libnvrtc-builtins.so"]));
    }
    if !matches!(scope, Scope::All | Scope::Cublas) {
        cublas.clear();
    }
    if !matches!(scope, Scope::All | Scope::Nvrtc) {
        nvrtc_files.clear();
    }
    let prebuilt = super::nvrtc::nvrtc_version().is_ok_and(|v| super::prebuilt::applies(cc, v));
    let mut files = in_order(prebuilt, nvrtc_files, cublas);
    files.retain(|f| will_need(f).is_ok());
    drop(nvrtc);
    files
}

/// The order of the requests: what the load needs first. Where the prebuilt kernels serve the
/// GPU NVRTC will not compile, and cuBLAS's handle is the next thing loaded.
fn in_order(prebuilt: bool, nvrtc: Vec<PathBuf>, cublas: Vec<PathBuf>) -> Vec<PathBuf> {
    if prebuilt {
        [cublas, nvrtc].concat()
    } else {
        [nvrtc, cublas].concat()
    }
}

/// The files of a maps file's mappings whose names start with one of `prefixes`, in the order of
/// `prefixes`, each once.
fn libraries_in_maps(maps: &str, prefixes: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for prefix in prefixes {
        for line in maps.lines() {
            let Some(path) = maps_path(line) else { continue };
            let path = Path::new(path);
            let named = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix));
            if named && path.is_absolute() && !found.iter().any(|f: &PathBuf| f == path) {
                found.push(path.to_path_buf());
            }
        }
    }
    found
}

/// The path of a line of a maps file (address perms offset dev inode path; the path may hold
/// spaces), unless the line has none or the file was replaced since it was mapped.
fn maps_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace)?..];
    }
    let path = rest.trim();
    (!path.is_empty() && !path.ends_with(" (deleted)")).then_some(path)
}

/// The files in `lib`'s directory whose names start with one of `prefixes` (in that order),
/// each real file once (the versioned names are symlinks to one file).
fn siblings(lib: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let Some(dir) = lib.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let names: Vec<(String, PathBuf)> = entries.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path()))).collect();
    let mut files: Vec<PathBuf> = Vec::new();
    for prefix in prefixes {
        let mut these: Vec<PathBuf> = names.iter().filter(|(n, _)| n.starts_with(prefix)).filter_map(|(_, p)| std::fs::canonicalize(p).ok()).collect();
        these.sort();
        for f in these {
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    files
}

/// Asks the kernel to read all of `path` into the page cache, in the background.
fn will_need(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_libraries_are_found_in_a_maps_file_once_each_in_the_order_asked() {
        let maps = "\
7f0000000000-7f0000100000 r--p 00000000 08:01 1234 /usr/local/cuda/lib64/libcublasLt.so.13.1.0.3
7f0000100000-7f0000200000 r-xp 00100000 08:01 1234 /usr/local/cuda/lib64/libcublasLt.so.13.1.0.3
7f0000200000-7f0000300000 r--p 00000000 08:01 1235 /usr/local/cuda/lib64/libcublas.so.13.1.0.3
7f0000300000-7f0000400000 r--p 00000000 08:01 1236 /opt/my libs/libnvrtc.so.13.0.88
7f0000400000-7f0000500000 rw-p 00000000 00:00 0 
7f0000500000-7f0000600000 r--p 00000000 08:01 1237 /usr/lib/libnvrtc-builtins.so.13.0.88 (deleted)
7ffd00000000-7ffd00100000 rw-p 00000000 00:00 0                          [stack]
";
        let cublas = libraries_in_maps(maps, &["libcublas.so", "libcublasLt.so"]);
        assert_eq!(cublas, [PathBuf::from("/usr/local/cuda/lib64/libcublas.so.13.1.0.3"), PathBuf::from("/usr/local/cuda/lib64/libcublasLt.so.13.1.0.3")]);
        assert_eq!(libraries_in_maps(maps, &["libnvrtc.so"]), [PathBuf::from("/opt/my libs/libnvrtc.so.13.0.88")]);
        assert_eq!(libraries_in_maps(maps, &["libcuda.so"]), Vec::<PathBuf>::new());
        assert_eq!(libraries_in_maps(maps, &["libnvrtc-builtins"]), Vec::<PathBuf>::new(), "a deleted file is not read");
    }

    #[test]
    fn the_files_beside_nvrtc_are_found_once_each_and_can_be_asked_for() {
        let dir = std::env::temp_dir().join(format!("ferrite-readahead-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let builtins = dir.join("libnvrtc-builtins.so.13.0.88");
        std::fs::write(&builtins, vec![7u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(&builtins, dir.join("libnvrtc-builtins.so.13.0")).unwrap();
        for name in ["libnvrtc.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let real = |n: &str| std::fs::canonicalize(dir.join(n)).unwrap();
        let nvrtc = dir.join("libnvrtc.so.13");
        assert_eq!(siblings(&nvrtc, &["libnvrtc-builtins.so"]), [real("libnvrtc-builtins.so.13.0.88")], "the symlink and the file are one file");
        // "libcublas.so" is not a prefix of "libcublasLt.so.13": each prefix finds its own.
        assert_eq!(siblings(&nvrtc, &["libcublas.so", "libcublasLt.so"]), [real("libcublas.so.13"), real("libcublasLt.so.13")]);
        will_need(&builtins).unwrap();
        assert!(will_need(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Where libnvrtc can be loaded (not in CI: LD_LIBRARY_PATH=.../nvidia/cu13/lib here), the
    /// thread finds it and its builtins, though nothing else has loaded it, and with
    /// `Scope::Nvrtc` nothing else.
    #[test]
    fn nvrtc_and_its_builtins_are_asked_for_where_nvrtc_loads() {
        if !crate::backend::cuda::context::nvrtc_library_present() {
            eprintln!("libnvrtc not found: nothing to ask for here");
            return;
        }
        let files = ask_ahead(Scope::Nvrtc, (8, 0));
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.first().is_some_and(|n| n.starts_with("libnvrtc.so")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("libnvrtc-builtins.so")), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("libcublas")), "{names:?}");
    }

    #[test]
    fn cublas_comes_first_only_where_nvrtc_will_not_compile() {
        let (n, c) = (vec![PathBuf::from("/l/libnvrtc.so.13")], vec![PathBuf::from("/l/libcublas.so.13")]);
        assert_eq!(in_order(true, n.clone(), c.clone()), [c[0].clone(), n[0].clone()]);
        assert_eq!(in_order(false, n.clone(), c.clone()), [n[0].clone(), c[0].clone()]);
    }

    #[test]
    fn the_environment_picks_what_is_read() {
        assert_eq!(scope(None), Scope::All);
        assert_eq!(scope(Some("1")), Scope::All);
        assert_eq!(scope(Some("0")), Scope::Off);
        assert_eq!(scope(Some("nvrtc")), Scope::Nvrtc);
        assert_eq!(scope(Some("cublas")), Scope::Cublas);
    }
}
