//! Facts about the machine a run happened on, for the JSON summary.

use serde::Serialize;

#[derive(Serialize, Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub commit: String,
    pub cpu: String,
}

pub fn describe() -> Machine {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let commit = option_env!("WALLETD_COMMIT")
        .map(str::to_string)
        .or_else(|| git_head(None))
        // Run from elsewhere: the executable usually sits in the repo's target/ dir.
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            git_head(exe.parent())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores,
        kernel,
        commit,
        cpu,
    }
}

fn git_head(dir: Option<&std::path::Path>) -> Option<String> {
    let mut git = std::process::Command::new("git");
    if let Some(dir) = dir {
        git.arg("-C").arg(dir);
    }
    git.args(["rev-parse", "--short=12", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}
