//! `--spawn`: a local walletd on a free loopback port with a temporary data dir, stopped (and
//! its directory removed) when the guard is dropped, whatever path the bench leaves by.

use net::{Client, ClientConfig};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long walletd gets to come up (recovery of an empty dir is quick; a slow disk is not).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long walletd gets to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Walletd {
    child: Option<Child>,
    pub addr: String,
    /// Holds `data/` (walletd's data dir) and `walletd.log` (its stdout and stderr).
    dir: PathBuf,
}

/// The `walletd` next to the running executable (both are built into the same target dir).
pub fn default_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    Ok(exe
        .parent()
        .map(|dir| dir.join("walletd"))
        .unwrap_or_else(|| PathBuf::from("walletd")))
}

impl Walletd {
    /// Starts walletd and waits until a client connects and pings it.
    pub fn start(
        binary: &Path,
        cores: &[usize],
        partitions: u32,
        extra_args: &[String],
    ) -> Result<Walletd, String> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        Walletd::start_at(binary, addr, cores, partitions, extra_args)
    }

    /// `start`, listening for clients on `addr` (a cluster's nodes know each other's
    /// addresses before they start).
    pub fn start_at(
        binary: &Path,
        addr: String,
        cores: &[usize],
        partitions: u32,
        extra_args: &[String],
    ) -> Result<Walletd, String> {
        if !binary.is_file() {
            return Err(format!(
                "{} not found: build it (cargo build --release -p walletd-tools) or pass --walletd PATH",
                binary.display()
            ));
        }
        let dir = temp_dir_here()?;
        // From here on, dropping `guard` cleans up.
        let mut guard = Walletd {
            child: None,
            addr: String::new(),
            dir,
        };
        guard.addr = addr;
        let log_path = guard.dir.join("walletd.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let cores_arg = cores
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(&guard.addr)
            .arg("--data-dir")
            .arg(guard.dir.join("data"))
            .arg("--cores")
            .arg(&cores_arg)
            .arg("--partitions")
            .arg(partitions.to_string())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a Ctrl-C at the terminal reaches only the bench, which
            // then stops the server itself after the check.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // If the bench dies without cleaning up, the server gets SIGTERM.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        guard.child = Some(child);
        guard.wait_ready()?;
        Ok(guard)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut config = ClientConfig::new(self.addr.clone());
        config.retries = 0;
        config.timeout_ms = 2000;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "walletd exited during start-up ({status}); its log ends with:\n{}",
                        self.log_tail()
                    ));
                }
            }
            let last_error = match Client::connect(config.clone()) {
                Ok(client) => match client.ping() {
                    Ok(()) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "walletd did not answer a ping within {} s ({last_error}); its log ends with:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Says on stderr how it went unless it was clean.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        match status {
            Some(status) if status.success() => {}
            Some(status) => eprintln!(
                "wallet-bench: walletd exited with {status} on SIGTERM; its log ends with:\n{}",
                self.log_tail()
            ),
            None => {
                eprintln!(
                    "wallet-bench: walletd did not stop within {} s of SIGTERM; killing it",
                    STOP_TIMEOUT.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("walletd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Walletd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port the kernel just gave out; there is a small window for someone else to take it.
pub fn free_port() -> Result<u16, String> {
    bind_free_port().map(|(_, port)| port)
}

/// A listener on a free loopback port, and the port: as long as the listener is held, the
/// kernel hands the port to nobody else (`spawn_cluster::PortPicker`).
pub fn bind_free_port() -> Result<(std::net::TcpListener, u16), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("no free loopback port: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok((listener, port))
}

pub fn temp_dir_here() -> Result<PathBuf, String> {
    let base = std::env::current_dir().map_err(|e| e.to_string())?;
    for n in 0..1000 {
        let dir = base.join(format!(".wallet-bench-run-{}-{n}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    Err("could not create a temporary directory in the current directory".into())
}
