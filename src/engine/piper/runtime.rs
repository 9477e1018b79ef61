//! ONNX Runtime for the piper engine: finding the shared library, loading it once per process
//! (`ort`'s `load-dynamic`), and running one Piper model.
//!
//! herald links no ONNX Runtime and downloads none: the library is the one the operator
//! installed, found from `[piper] onnxruntime`, else `ORT_DYLIB_PATH`, else the usual system
//! locations (Debian's `libonnxruntime` package, `/usr/local/lib`), else the dynamic loader's
//! own search path. It must not be called from a tokio worker: loading and inference block.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use ort::{
    session::{Session, builder::GraphOptimizationLevel},
    value::Tensor,
};

/// Directories searched for `libonnxruntime.so*` when no path is configured.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib64",
    "/usr/lib",
];

/// Where the library may be, in order. An explicit path (config or `ORT_DYLIB_PATH`) is the
/// only candidate: a wrong one is an error, not a reason to load another library.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = explicit {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    for dir in SYSTEM_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        // The unversioned name first, then the shortest (the soname before the full version).
        found.sort_by_key(|p| p.as_os_str().len());
        out.extend(found);
    }
    // The loader's search path (LD_LIBRARY_PATH, ld.so.cache).
    out.push(PathBuf::from("libonnxruntime.so.1"));
    out.push(PathBuf::from("libonnxruntime.so"));
    out
}

/// A loaded ONNX Runtime.
pub struct Runtime {
    environment: ort::environment::Environment,
    /// The library that was loaded.
    pub library: PathBuf,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// The process's runtime: ONNX Runtime allows one environment per process, and a loaded
    /// library cannot be swapped, so the first successful load serves every later engine (a
    /// daemon builds its engines once; tests build many). Blocking.
    pub fn shared(explicit: Option<&Path>) -> Result<Arc<Self>, String> {
        static SHARED: std::sync::Mutex<Option<Arc<Runtime>>> = std::sync::Mutex::new(None);
        let mut shared = SHARED
            .lock()
            .map_err(|_| "a runtime load panicked".to_owned())?;
        if let Some(rt) = shared.as_ref() {
            if explicit.is_some_and(|p| p != rt.library) {
                tracing::warn!(
                    loaded = %rt.library.display(),
                    "ONNX Runtime is already loaded in this process; the configured library is not used"
                );
            }
            return Ok(Arc::clone(rt));
        }
        let rt = Arc::new(Self::load(explicit)?);
        *shared = Some(Arc::clone(&rt));
        Ok(rt)
    }

    /// Loads the first candidate that is an ONNX Runtime `ort` can use. `Err` lists what was
    /// tried and why each failed. Blocking.
    fn load(explicit: Option<&Path>) -> Result<Self, String> {
        let mut failures = Vec::new();
        for candidate in candidates(explicit) {
            match ort::init_from(&candidate) {
                Ok(builder) => {
                    let environment = builder
                        .with_name("herald")
                        .build()
                        .map_err(|e| format!("{}: {e}", candidate.display()))?;
                    return Ok(Self {
                        environment,
                        library: candidate,
                    });
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(failures.join("; "))
    }

    /// A session for `model`, with `threads` intra-op threads (0 = ONNX Runtime's default).
    /// Blocking (reads and optimizes the model).
    pub fn session(&self, model: &Path, threads: usize) -> Result<Model, String> {
        let fail = |e: String| format!("cannot load {}: {e}", model.display());
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.to_string()))?;
        if threads > 0 {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| fail(e.to_string()))?;
        }
        let session = builder
            .commit_from_file(model)
            .map_err(|e| fail(e.to_string()))?;
        let has_sid = session.inputs().iter().any(|i| i.name() == "sid");
        Ok(Model {
            session: std::sync::Mutex::new(session),
            has_sid,
        })
    }
}

/// One loaded Piper model. Inference takes its lock: one sentence at a time per voice.
pub struct Model {
    session: std::sync::Mutex<Session>,
    /// The model takes a speaker id (multi-speaker voice).
    has_sid: bool,
}

impl Model {
    /// The audio of one sentence's phoneme ids, float samples at the voice's rate. Blocking.
    pub fn infer(
        &self,
        ids: &[i64],
        scales: [f32; 3],
        sid: Option<i64>,
    ) -> Result<Vec<f32>, String> {
        let n = i64::try_from(ids.len()).map_err(|e| e.to_string())?;
        let err = |e: ort::Error| e.to_string();
        let input = Tensor::from_array((vec![1_i64, n], ids.to_vec())).map_err(err)?;
        let lengths = Tensor::from_array((vec![1_i64], vec![n])).map_err(err)?;
        let scales = Tensor::from_array((vec![3_i64], scales.to_vec())).map_err(err)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| "a previous inference panicked".to_owned())?;
        let outputs = match (self.has_sid, sid) {
            (true, sid) => {
                let sid = Tensor::from_array((vec![1_i64], vec![sid.unwrap_or(0)])).map_err(err)?;
                session.run(ort::inputs![
                    "input" => input,
                    "input_lengths" => lengths,
                    "scales" => scales,
                    "sid" => sid,
                ])
            }
            (false, _) => session.run(ort::inputs![
                "input" => input,
                "input_lengths" => lengths,
                "scales" => scales,
            ]),
        }
        .map_err(err)?;
        let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(samples.to_vec())
    }
}
