//! A `walletd` child process on a free loopback port with its own data dir, for tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub addr: String,
    pub data_dir: PathBuf,
    binary: PathBuf,
    extra_args: Vec<String>,
    /// The client token the server demands, if any (used by the readiness probe).
    token: Option<Vec<u8>>,
    /// How to speak TLS to it, if it does (used by the readiness probe).
    tls: Option<net::ClientTls>,
    /// Where its stderr goes (appended across restarts); inherited when `None`.
    log_file: Option<PathBuf>,
    child: Option<Child>,
}

/// A loopback port for a test server: below the kernel's ephemeral range (so no outgoing
/// connection, and no connect-to-self, can be using it), unique within this test process
/// (tests run in parallel threads), and free when checked.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 500) * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl ServerProcess {
    /// Starts `binary` (the walletd program) and waits until it accepts connections.
    pub fn start(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> ServerProcess {
        ServerProcess::start_probed(binary, data_dir, extra_args, None, None)
    }

    /// Like `start`, for a server that demands `token` and/or speaks TLS (`extra_args` say so
    /// to the server; `token` and `tls` tell the readiness probe).
    pub fn start_probed(
        binary: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        token: Option<Vec<u8>>,
        tls: Option<net::ClientTls>,
    ) -> ServerProcess {
        let mut server = ServerProcess {
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            token,
            tls,
            log_file: None,
            child: None,
        };
        // The port was free when `free_port` checked it, but something may take it before
        // walletd binds it (seen once in CI: "Address already in use"): the harness picked it,
        // so it picks another. A walletd that fails for any other reason fails three times.
        for attempt in 1.. {
            match server.try_launch() {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    eprintln!("{e}; starting again on another port");
                    server.addr = format!("127.0.0.1:{}", free_port());
                }
                Err(e) => panic!("{e}"),
            }
        }
        server
    }

    /// Like `start`, on the client address `addr` (a cluster's nodes must know each other's
    /// addresses before they start).
    pub fn start_at(
        binary: &Path,
        addr: String,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> ServerProcess {
        ServerProcess::start_at_maybe_logged(binary, addr, data_dir, extra_args, None)
    }

    /// Like `start_at`, with the server's stderr appended to `log_file` (kept across
    /// restarts), for long runs whose logs are read afterwards.
    pub fn start_at_logged(
        binary: &Path,
        addr: String,
        data_dir: &Path,
        extra_args: &[&str],
        log_file: &Path,
    ) -> ServerProcess {
        ServerProcess::start_at_maybe_logged(binary, addr, data_dir, extra_args, Some(log_file))
    }

    fn start_at_maybe_logged(
        binary: &Path,
        addr: String,
        data_dir: &Path,
        extra_args: &[&str],
        log_file: Option<&Path>,
    ) -> ServerProcess {
        let mut server = ServerProcess {
            addr,
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            token: None,
            tls: None,
            log_file: log_file.map(Path::to_path_buf),
            child: None,
        };
        server.launch();
        server
    }

    /// Like `start`, with clients required to present the token in `token_file`.
    pub fn start_with_token(binary: &Path, data_dir: &Path, token_file: &Path) -> ServerProcess {
        let token = std::fs::read_to_string(token_file)
            .expect("token file")
            .trim()
            .as_bytes()
            .to_vec();
        let mut server = ServerProcess {
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            binary: binary.to_path_buf(),
            extra_args: vec!["--auth-token-file".into(), token_file.display().to_string()],
            token: Some(token),
            tls: None,
            log_file: None,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        if let Err(e) = self.try_launch() {
            panic!("{e}");
        }
    }

    /// Starts the process and waits until it answers; `Err` if it exited during start-up.
    fn try_launch(&mut self) -> Result<(), String> {
        let stderr = match &self.log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(&self.binary)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env(
                "WALLETD_LOG",
                // Warnings only on the test's own stderr; a log file gets walletd's own
                // default (info), which tests read for what happened (a snapshot installed).
                std::env::var("WALLETD_TEST_LOG").unwrap_or_else(|_| {
                    let level = if self.log_file.is_some() {
                        "info"
                    } else {
                        "warn"
                    };
                    level.into()
                }),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start walletd");
        self.child = Some(child);
        // Ready means a full handshake and ping succeed: a bare TCP connect can still land on
        // the listening socket of a just-killed predecessor, which the kernel releases only
        // when its io_uring instance is torn down.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut config = net::ClientConfig::new(self.addr.clone());
        config.retries = 0;
        config.timeout_ms = 2_000;
        config.token = self.token.clone();
        config.tls = self.tls.clone();
        while net::Client::connect(config.clone())
            .and_then(|c| c.ping())
            .is_err()
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("walletd exited during start-up: {status}"));
            }
            assert!(
                Instant::now() < deadline,
                "walletd did not start listening on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to the running process; false if not running.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        match &self.child {
            // SAFETY: plain syscall; the pid is our own child, not yet reaped.
            Some(child) => unsafe { libc::kill(child.id() as libc::pid_t, signal) == 0 },
            None => false,
        }
    }

    /// SIGTERM and wait: the clean shutdown path. Returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().ok().and_then(|s| s.code())
    }

    /// SIGKILL and wait: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address and data dir.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.launch();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
