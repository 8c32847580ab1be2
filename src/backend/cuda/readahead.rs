//! Reading the CUDA libraries' files into the page cache ahead of their use, on a machine whose
//! disk cache is cold.
//!
//! A first load on a fresh H200 machine took 9.0 s, of which NVRTC 7.0 s, against 1.9 s (0.9 s)
//! with the same files already read once (docs/BENCHMARKS.md, 2026-12-04): the compile threads
//! page-fault libnvrtc's 104 MiB one small read at a time. Reading each library front to back in
//! large sequential reads, in the background from the moment the CUDA context is created, lets
//! the disk stream it while the driver initializes; the compile threads then find it in memory.
//! cuBLAS (52 + 517 MiB), whose handle is created after the compiles, is read on a second thread.
//!
//! `FERRITE_CUDA_READAHEAD=0` turns it off, `=nvrtc` reads NVRTC's files only (to measure what
//! each part buys). Errors are ignored: this only ever makes later reads faster.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What `FERRITE_CUDA_READAHEAD` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Off,
    Nvrtc,
    All,
}

fn scope(value: Option<&str>) -> Scope {
    match value.map(str::trim) {
        Some("0") => Scope::Off,
        Some("nvrtc") => Scope::Nvrtc,
        _ => Scope::All,
    }
}

/// Starts the background reads, once a process.
pub fn start() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let scope = scope(std::env::var("FERRITE_CUDA_READAHEAD").ok().as_deref());
        if scope == Scope::Off {
            return;
        }
        // Loading a library (cudarc keeps it loaded) maps it, so /proc/self/maps then names the
        // file the loader picked, whichever of the candidate names and paths it was.
        let _ = std::thread::Builder::new().name("ferrite-readahead-nvrtc".into()).spawn(|| {
            if super::context::nvrtc_library_present() {
                let mut files = mapped_libraries(&["libnvrtc.so"]);
                let builtins: Vec<PathBuf> = files.iter().flat_map(|f| builtins_beside(f)).collect();
                files.extend(builtins);
                read_all(&files);
            }
        });
        if scope == Scope::All {
            let _ = std::thread::Builder::new().name("ferrite-readahead-cublas".into()).spawn(|| {
                if super::context::cublas_library_present() {
                    read_all(&mapped_libraries(&["libcublas.so", "libcublasLt.so"]));
                }
            });
        }
    });
}

/// The files of this process's mappings whose names start with one of `prefixes`, in the order
/// of `prefixes`, each once.
fn mapped_libraries(prefixes: &[&str]) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/maps").map_or_else(|_| Vec::new(), |maps| libraries_in_maps(&maps, prefixes))
}

/// [`mapped_libraries`] over the text of a maps file.
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

/// NVRTC's builtins library, which libnvrtc loads from its own directory at the first compile:
/// the files there named `libnvrtc-builtins.so*`, each real file once.
fn builtins_beside(nvrtc: &Path) -> Vec<PathBuf> {
    let Some(dir) = nvrtc.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("libnvrtc-builtins.so")))
        .filter_map(|e| std::fs::canonicalize(e.path()).ok())
        .collect();
    files.sort();
    files.dedup();
    files
}

fn read_all(files: &[PathBuf]) {
    let mut buf = vec![0u8; 4 << 20];
    for f in files {
        let _ = read_through(f, &mut buf);
    }
}

/// Reads `path` to its end through `buf`, returning the bytes read.
fn read_through(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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
    fn builtins_are_found_beside_nvrtc_and_read_to_the_end() {
        let dir = std::env::temp_dir().join(format!("ferrite-readahead-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("libnvrtc-builtins.so.13.0.88");
        let body: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&real, &body).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("libnvrtc-builtins.so.13.0")).unwrap();
        std::fs::write(dir.join("libnvrtc.so.13"), b"x").unwrap();
        std::fs::write(dir.join("libcublas.so.13"), b"x").unwrap();
        let found = builtins_beside(&dir.join("libnvrtc.so.13"));
        assert_eq!(found, [std::fs::canonicalize(&real).unwrap()], "the symlink and the file are one file");
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(read_through(&found[0], &mut buf).unwrap(), body.len() as u64);
        assert!(read_through(&dir.join("missing"), &mut buf).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_environment_picks_what_is_read() {
        assert_eq!(scope(None), Scope::All);
        assert_eq!(scope(Some("1")), Scope::All);
        assert_eq!(scope(Some("0")), Scope::Off);
        assert_eq!(scope(Some("nvrtc")), Scope::Nvrtc);
    }
}
