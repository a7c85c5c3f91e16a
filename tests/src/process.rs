//! Child processes that never outlive the test binary.
//!
//! Three layers, because a test binary can end in three ways:
//! - a [`Managed`] handle stops its process on `Drop` (normal scope end, panics that unwind);
//! - every live PID sits in a registry that a `libc::atexit` handler kills — the shared
//!   control plane lives in a `static`, which is never dropped, and the test harness
//!   leaves through `exit()` after the last test (also when tests failed);
//! - children are spawned from one long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, so
//!   the kernel kills them even when the test binary itself is SIGKILLed (the signal is
//!   tied to the spawning *thread*, hence a thread that lives as long as the process).
//!
//! Processes are only ever signalled by the PID the rig spawned, never by name.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::RigError;

/// PIDs of every child still running, killed at process exit.
fn registry() -> &'static Mutex<HashSet<u32>> {
    static REGISTRY: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(kill_registered_at_exit) };
        Mutex::new(HashSet::new())
    })
}

/// Directories removed at exit once their processes are gone (the shared cluster's temp
/// dir), unless a test failed or `SPOTKUBE_KEEP_RIG` is set — then logs stay for reading.
fn exit_dirs() -> &'static Mutex<(Vec<PathBuf>, bool)> {
    static DIRS: OnceLock<Mutex<(Vec<PathBuf>, bool)>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new((Vec::new(), std::env::var_os("SPOTKUBE_KEEP_RIG").is_some())))
}

/// Removes `dir` when the process exits (see [`keep_files`]).
pub fn remove_at_exit(dir: PathBuf) {
    registry();
    exit_dirs()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .push(dir);
}

/// Keeps every directory registered with [`remove_at_exit`] (called when a test fails).
pub fn keep_files() {
    exit_dirs().lock().unwrap_or_else(|p| p.into_inner()).1 = true;
}

extern "C" fn kill_registered_at_exit() {
    kill_registered();
    if let Ok(dirs) = exit_dirs().try_lock() {
        let (dirs, keep) = &*dirs;
        for dir in dirs {
            if *keep {
                eprintln!("spotkube rig: kept {} for inspection", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn kill_registered() {
    // try_lock: never deadlock the exit path if a panicking thread held the lock.
    let pids: Vec<u32> = match registry().try_lock() {
        Ok(set) => set.iter().copied().collect(),
        Err(_) => return,
    };
    for pid in &pids {
        // SAFETY: signalling a PID this process spawned and has not reaped.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for pid in pids {
        loop {
            let mut status = 0;
            // SAFETY: reaping our own child; WNOHANG never blocks.
            let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if reaped != 0 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; harmless if the process is already gone.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The long-lived thread every child is spawned from (see the module docs).
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("spotkube-rig-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The channel sender lives in a static: this loop only ends with the process.
            })
            .expect("spawn the rig's spawner thread");
        Mutex::new(tx)
    })
}

/// What to run: program, arguments, environment, and the log file name.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl Spec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running child process whose stdout and stderr go to one log file.
#[derive(Debug)]
pub struct Managed {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Managed {
    /// Spawns `spec` with its output appended to `<log_dir>/<name>.log`.
    pub fn spawn(spec: Spec, log_dir: &Path) -> Result<Self, RigError> {
        std::fs::create_dir_all(log_dir).map_err(|e| RigError::io(log_dir, e))?;
        let log = log_dir.join(format!("{}.log", spec.name));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| RigError::io(&log, e))?;
        let err = out.try_clone().map_err(|e| RigError::io(&log, e))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let registry = registry();
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| RigError::Spawn {
                name: spec.name.clone(),
                reason: "spawner lock poisoned".into(),
            })?
            .send((command, reply_tx))
            .map_err(|_| RigError::Spawn {
                name: spec.name.clone(),
                reason: "spawner thread gone".into(),
            })?;
        let child = reply_rx
            .recv()
            .map_err(|_| RigError::Spawn {
                name: spec.name.clone(),
                reason: "spawner thread gone".into(),
            })?
            .map_err(|e| RigError::Spawn {
                name: spec.name.clone(),
                reason: format!("{}: {e}", spec.program.display()),
            })?;
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(child.id());
        tracing::debug!(name = %spec.name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: spec.name,
            child: Some(child),
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(exit status text)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGKILL, as a crash would (for restart tests); the handle is then spent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            unregister(child.id());
        }
    }

    /// SIGTERM only, without waiting: for tests of what a program does while it shuts
    /// down (poll [`Managed::exited`]). Dropping the handle still stops it.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child, not yet reaped (we hold it).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own, not yet reaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                unregister(child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        unregister(child.id());
    }

    /// The last `lines` lines of the log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

fn unregister(pid: u32) {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
}

/// The last `lines` lines of a text file ("" when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
