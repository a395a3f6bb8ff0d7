//! One walletd process the harness owns: start, wait until it answers, and the faults that act
//! on a live process (SIGKILL, SIGSTOP/SIGCONT, a lowered file size limit, SIGTERM).
//! Every method returns an error instead of panicking: the harness reports, it does not abort.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start (recovery included) may take before the harness calls it a failure.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean stop (SIGTERM: drain, flush, snapshot) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A walletd node of the harness: its address, data dir and (while running) its process.
pub struct NodeHandle {
    pub name: String,
    pub addr: String,
    pub data_dir: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    log_file: PathBuf,
    child: Option<Child>,
    log_copier: Option<std::thread::JoinHandle<()>>,
    paused: bool,
    file_size_limited: bool,
}

impl NodeHandle {
    /// A node on `addr` that keeps its data in `data_dir` and its stderr in `log_file`
    /// (appended across restarts). `args` are passed after `--listen` and `--data-dir`.
    pub fn new(
        name: &str,
        binary: &Path,
        addr: String,
        data_dir: &Path,
        log_file: &Path,
        args: Vec<String>,
    ) -> NodeHandle {
        NodeHandle {
            name: name.to_string(),
            addr,
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            args,
            log_file: log_file.to_path_buf(),
            child: None,
            log_copier: None,
            paused: false,
            file_size_limited: false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until a handshake and a ping succeed (a bare connect can
    /// land on a just-killed predecessor's socket). Returns how long that took.
    pub fn start(&mut self) -> Result<Duration, String> {
        if self.child.is_some() {
            return Err(format!("{}: already running", self.name));
        }
        let started = Instant::now();
        let mut child = Command::new(&self.binary)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env(
                "WALLETD_LOG",
                std::env::var("WALLETD_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            // A pipe, not the log file: a lowered RLIMIT_FSIZE must not hit walletd's own
            // stderr. A thread copies it to the log file.
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: cannot start {}: {e}", self.name, self.binary.display()))?;
        let stderr = child.stderr.take();
        let pid = child.id();
        self.child = Some(child);
        self.paused = false;
        self.file_size_limited = false;
        if let Some(stderr) = stderr {
            let path = self.log_file.clone();
            self.log_copier = Some(std::thread::spawn(move || copy_log(stderr, &path, pid)));
        }
        let mut config = net::ClientConfig::new(self.addr.clone());
        config.retries = 0;
        config.timeout_ms = 2_000;
        loop {
            if net::Client::connect(config.clone())
                .and_then(|c| c.ping())
                .is_ok()
            {
                return Ok(started.elapsed());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.reap();
                    return Err(format!(
                        "{}: walletd exited during start-up ({status}); see {}",
                        self.name,
                        self.log_file.display()
                    ));
                }
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(format!(
                    "{}: walletd did not answer on {} within {:?}; see {}",
                    self.name,
                    self.addr,
                    START_TIMEOUT,
                    self.log_file.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and wait: a crash. A paused process dies too (SIGKILL needs no SIGCONT).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.reap();
    }

    /// SIGTERM and wait (bounded): the clean shutdown. Returns the exit code, or an error if
    /// the process did not exit in time (it is then killed).
    pub fn terminate(&mut self) -> Result<Option<i32>, String> {
        let Some(child) = self.child.as_mut() else {
            return Err(format!("{}: not running", self.name));
        };
        if self.paused {
            signal(child.id(), libc::SIGCONT);
            self.paused = false;
        }
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.reap();
                    return Ok(status.code());
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    self.kill();
                    return Err(format!(
                        "{}: no exit within {STOP_TIMEOUT:?} of SIGTERM (killed)",
                        self.name
                    ));
                }
                Err(e) => {
                    self.kill();
                    return Err(format!("{}: wait: {e}", self.name));
                }
            }
        }
    }

    /// SIGSTOP: the process freezes (a long GC-like pause, a VM steal) with its sockets open.
    pub fn pause(&mut self) -> Result<(), String> {
        let pid = self.running_pid()?;
        signal(pid, libc::SIGSTOP);
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self) -> Result<(), String> {
        let pid = self.running_pid()?;
        signal(pid, libc::SIGCONT);
        self.paused = false;
        Ok(())
    }

    /// Lowers the live process's file size limit to `bytes` (`RLIMIT_FSIZE` through
    /// `prlimit`): log writes past that offset fail with EFBIG, which walletd treats as a
    /// full disk. `None` restores the hard limit.
    pub fn limit_file_size(&mut self, bytes: Option<u64>) -> Result<(), String> {
        let pid = self.running_pid()?;
        crate::set_file_size_limit(pid, bytes)
            .map_err(|e| format!("{}: prlimit: {e}", self.name))?;
        self.file_size_limited = bytes.is_some();
        Ok(())
    }

    /// Undoes whatever fault is still applied (SIGCONT, the file size limit), so the node can
    /// serve the final checks.
    pub fn heal(&mut self) -> Result<(), String> {
        if self.paused {
            self.resume()?;
        }
        if self.file_size_limited {
            self.limit_file_size(None)?;
        }
        Ok(())
    }

    fn running_pid(&self) -> Result<u32, String> {
        self.pid()
            .ok_or_else(|| format!("{}: not running", self.name))
    }

    fn reap(&mut self) {
        self.child = None;
        self.paused = false;
        self.file_size_limited = false;
        if let Some(copier) = self.log_copier.take() {
            // The pipe closes with the process; the copier then ends.
            let _ = copier.join();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: plain syscall; the pid is our own child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Copies a process's stderr to `path` line by line, each line prefixed with its pid. Reads
/// one bounded line at a time (a line longer than 64 KiB is cut).
fn copy_log(stderr: impl std::io::Read, path: &Path, pid: u32) {
    let Ok(mut out) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        match (&mut reader).take(64 << 10).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = write!(out, "[pid {pid}] ");
                let _ = out.write_all(&line);
                if line.last() != Some(&b'\n') {
                    let _ = out.write_all(b"\n");
                }
            }
        }
    }
}
