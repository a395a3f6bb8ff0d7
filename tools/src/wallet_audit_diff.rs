//! `wallet audit trace` and `wallet audit diff`: the auditor's third question, "would another
//! version of the code have decided the same?".
//!
//! `trace` replays a data dir from genesis and prints one JSON line per log entry: partition,
//! index, timestamp, a chained digest of everything the entry decided (result codes, TC/C
//! messages and outcomes, encoded independently of the build) and, at checkpoints, the digest
//! of the whole partition state. `diff` runs `trace` of this build and of another build (any
//! `wallet` binary with the same `audit trace` contract) side by side on the same data and
//! names the first entry where they part.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Entries between two full state digests in a trace, unless told otherwise.
pub const CHECKPOINT_EVERY_DEFAULT: u64 = 256;

pub fn trace(data_dir: &Path, checkpoint_every: u64) -> Result<(), String> {
    if checkpoint_every == 0 {
        return Err("--checkpoint-every must be at least 1".into());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write_error: Option<std::io::Error> = None;
    engine::audit::trace(data_dir, checkpoint_every, |line| {
        if write_error.is_some() {
            return;
        }
        let value = json!({
            "partition": line.partition, "index": line.index, "timestamp": line.timestamp,
            "outputs": format!("{:032x}", line.outputs),
            "state": line.state.map(|d| format!("{d:032x}")),
        });
        if let Err(e) = writeln!(out, "{value}") {
            write_error = Some(e);
        }
    })
    .map_err(|e| e.to_string())?;
    match write_error {
        // A closed pipe (e.g. `| head`) is the reader's choice, not a failure of the trace.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
        _ => out.flush().or(Ok(())),
    }
}

/// Where two traces part, if they do.
#[derive(Debug, PartialEq, Eq)]
pub enum Divergence {
    /// Both builds decided the same for every entry and reached the same states.
    None { entries: u64 },
    /// The entry where the decisions first differ.
    Outputs { ours: Value, theirs: Value },
    /// Decisions agree, but the state digest at this checkpoint differs: the divergence lies
    /// after the previous checkpoint (`since_index`) and at or before this entry.
    State {
        ours: Value,
        theirs: Value,
        since_index: u64,
    },
    /// The builds applied different entries (one stopped, or indexes differ).
    Entries {
        ours: Option<Value>,
        theirs: Option<Value>,
    },
}

/// Compares two traces line by line.
pub fn first_divergence(
    ours: impl Iterator<Item = Result<Value, String>>,
    theirs: impl Iterator<Item = Result<Value, String>>,
) -> Result<Divergence, String> {
    let mut ours = ours.fuse();
    let mut theirs = theirs.fuse();
    let mut entries = 0u64;
    let mut last_checkpoint: Option<(Value, u64)> = None;
    loop {
        let (a, b) = match (ours.next().transpose()?, theirs.next().transpose()?) {
            (None, None) => return Ok(Divergence::None { entries }),
            (Some(a), Some(b)) => (a, b),
            (a, b) => return Ok(Divergence::Entries { ours: a, theirs: b }),
        };
        if a["partition"] != b["partition"] || a["index"] != b["index"] {
            return Ok(Divergence::Entries {
                ours: Some(a),
                theirs: Some(b),
            });
        }
        if a["outputs"] != b["outputs"] {
            return Ok(Divergence::Outputs { ours: a, theirs: b });
        }
        if a["state"] != b["state"] {
            let since_index = match &last_checkpoint {
                Some((partition, index)) if *partition == a["partition"] => *index,
                _ => 0,
            };
            return Ok(Divergence::State {
                ours: a,
                theirs: b,
                since_index,
            });
        }
        if !a["state"].is_null() {
            last_checkpoint = Some((a["partition"].clone(), a["index"].as_u64().unwrap_or(0)));
        }
        entries += 1;
    }
}

/// Runs `audit trace` of this build and of `against` on `data_dir` and reports the first
/// divergence; a divergence is a failure (exit 1) so scripts can gate on it.
pub fn diff(
    data_dir: &Path,
    against: &Path,
    checkpoint_every: u64,
    as_json: bool,
) -> Result<(), String> {
    let this_build = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let mut ours = spawn_trace(&this_build, data_dir, checkpoint_every)?;
    let mut theirs = spawn_trace(against, data_dir, checkpoint_every)?;
    let result = first_divergence(trace_lines(&mut ours), trace_lines(&mut theirs));
    // Stop whichever is still running (a divergence is found before the end), then make sure
    // each trace that ran to the end succeeded.
    let ours_status = finish(ours, &this_build)?;
    let theirs_status = finish(theirs, against)?;
    let divergence = result?;
    // A trace that stopped early because its build failed is an error, not a divergence.
    let ran_to_end = matches!(
        divergence,
        Divergence::None { .. }
            | Divergence::Entries { ours: None, .. }
            | Divergence::Entries { theirs: None, .. }
    );
    if ran_to_end {
        ours_status?;
        theirs_status?;
    }
    let (report, diverged) = describe(&divergence, against);
    if as_json {
        println!("{report}");
    } else {
        println!("{}", report["summary"].as_str().unwrap_or_default());
    }
    if diverged {
        Err(report["summary"].as_str().unwrap_or("diverged").to_string())
    } else {
        Ok(())
    }
}

fn describe(divergence: &Divergence, against: &Path) -> (Value, bool) {
    let other = against.display();
    match divergence {
        Divergence::None { entries } => (
            json!({"identical": true, "entries": entries,
                   "summary": format!("identical: {entries} entries decided the same by both builds, same state digests")}),
            false,
        ),
        Divergence::Outputs { ours, theirs } => (
            json!({"identical": false, "kind": "outputs", "ours": ours, "theirs": theirs,
                   "summary": format!("first divergence: partition {} entry {} (timestamp {}): {other} decided differently (result codes or TC/C steps)",
                                      ours["partition"], ours["index"], ours["timestamp"])}),
            true,
        ),
        Divergence::State {
            ours,
            theirs,
            since_index,
        } => (
            json!({"identical": false, "kind": "state", "ours": ours, "theirs": theirs, "since_index": since_index,
                   "summary": format!("first divergence: partition {} state differs at entry {} although every decision agreed; it lies in entries {}..={}",
                                      ours["partition"], ours["index"], since_index + 1, ours["index"])}),
            true,
        ),
        Divergence::Entries { ours, theirs } => (
            json!({"identical": false, "kind": "entries", "ours": ours, "theirs": theirs,
                   "summary": format!("the builds applied different entries: this build {}, {other} {}",
                                      ours.as_ref().map_or("ended".to_string(), |v| format!("at partition {} entry {}", v["partition"], v["index"])),
                                      theirs.as_ref().map_or("ended".to_string(), |v| format!("at partition {} entry {}", v["partition"], v["index"])))}),
            true,
        ),
    }
}

fn spawn_trace(binary: &Path, data_dir: &Path, checkpoint_every: u64) -> Result<Child, String> {
    Command::new(binary)
        .args(["audit", "trace", "--data-dir"])
        .arg(data_dir)
        .args(["--checkpoint-every", &checkpoint_every.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Inherited, not piped: nobody reads a pipe while the traces run, and a chatty build
        // must not block on a full one. Its complaints appear above our verdict.
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))
}

fn trace_lines(child: &mut Child) -> impl Iterator<Item = Result<Value, String>> + '_ {
    let stdout = child.stdout.take().expect("stdout is piped");
    BufReader::new(stdout).lines().map(|line| {
        let line = line.map_err(|e| format!("reading a trace: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("not a trace line ({e}): {line}"))
    })
}

/// Stops `child` if it is still running and returns whether its trace completed.
fn finish(mut child: Child, binary: &Path) -> Result<Result<(), String>, String> {
    if child.try_wait().map_err(|e| e.to_string())?.is_none() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} audit trace failed ({status}; its stderr is above)",
            binary.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(partition: u32, index: u64, outputs: &str, state: Option<&str>) -> Value {
        json!({"partition": partition, "index": index, "timestamp": index * 10,
               "outputs": outputs, "state": state})
    }

    fn run(a: Vec<Value>, b: Vec<Value>) -> Divergence {
        first_divergence(a.into_iter().map(Ok), b.into_iter().map(Ok)).unwrap()
    }

    #[test]
    fn names_the_first_entry_that_decided_differently() {
        let a = vec![
            line(0, 1, "a", None),
            line(0, 2, "b", None),
            line(0, 3, "c", None),
        ];
        let mut b = a.clone();
        b[1]["outputs"] = json!("x");
        b[2]["outputs"] = json!("y");
        assert_eq!(
            run(a.clone(), b.clone()),
            Divergence::Outputs {
                ours: a[1].clone(),
                theirs: b[1].clone()
            }
        );
    }

    #[test]
    fn a_state_only_divergence_is_bounded_by_the_previous_checkpoint() {
        let a = vec![
            line(0, 1, "a", Some("s1")),
            line(0, 2, "b", None),
            line(0, 3, "c", Some("s3")),
        ];
        let mut b = a.clone();
        b[2]["state"] = json!("other");
        match run(a, b) {
            Divergence::State { since_index, .. } => assert_eq!(since_index, 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn identical_and_truncated_traces() {
        let a = vec![line(0, 1, "a", None), line(1, 1, "b", Some("s"))];
        assert_eq!(run(a.clone(), a.clone()), Divergence::None { entries: 2 });
        assert!(matches!(
            run(a.clone(), a[..1].to_vec()),
            Divergence::Entries { theirs: None, .. }
        ));
    }
}
