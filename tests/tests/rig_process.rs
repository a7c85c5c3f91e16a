//! Rig self-test: no orphan processes, however the test binary ends.
//!
//! The test re-runs its own binary as a child "test process" (selected by an environment
//! variable) that starts a long `sleep` through the rig and reports its PID, then ends in
//! one of three ways: the handle is dropped, the process exits with the child still
//! registered, or the process is SIGKILLed. In every case the `sleep` must be gone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spotkube_rig::process::{Managed, Spec};

const ROLE: &str = "SPOTKUBE_RIG_PROCESS_TEST_ROLE";
const TEST_NAME: &str = "rig_children_never_outlive_the_test_binary";

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The child role: start `sleep`, print its PID, then end as `role` says.
fn child(role: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sleeper = Managed::spawn(Spec::new("sleeper", "/bin/sleep").arg("600"), dir.path())
        .expect("spawn sleep");
    println!("SLEEPER_PID={}", sleeper.pid().expect("pid"));
    match role {
        "drop" => {
            drop(sleeper);
            println!("DROPPED");
            std::thread::sleep(Duration::from_secs(600));
        }
        "exit" => {
            // Leak the handle, as a static would: only the atexit handler can stop it.
            std::mem::forget(sleeper);
            std::process::exit(0);
        }
        "sigkill" => {
            assert!(sleeper.exited().is_none());
            std::mem::forget(sleeper);
            std::thread::sleep(Duration::from_secs(600));
        }
        other => panic!("unknown role {other}"),
    }
}

/// Runs this test binary as a child in `role`; returns it and the sleeper's PID.
fn spawn_child(role: &str) -> (std::process::Child, i32) {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child test binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pid = loop {
        let line = lines
            .next()
            .expect("child printed the sleeper pid")
            .expect("read");
        // The harness prints "test <name> ... " on the same line before our output.
        if let Some((_, pid)) = line.split_once("SLEEPER_PID=") {
            break pid.trim().parse::<i32>().expect("pid");
        }
    };
    // Keep reading in the background so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, pid)
}

#[test]
fn rig_children_never_outlive_the_test_binary() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }

    // Dropping the handle stops the process (the test process itself keeps running).
    let (mut c, pid) = spawn_child("drop");
    assert!(
        wait_gone(pid),
        "sleep {pid} survived its handle being dropped"
    );
    c.kill().ok();
    c.wait().ok();

    // exit() with a still-registered child: the atexit handler stops it.
    let (mut c, pid) = spawn_child("exit");
    let status = c.wait().expect("child exits");
    assert!(status.success(), "child exited with {status}");
    assert!(
        wait_gone(pid),
        "sleep {pid} survived exit() of the test binary"
    );

    // SIGKILL of the test binary: PR_SET_PDEATHSIG makes the kernel kill the child.
    let (mut c, pid) = spawn_child("sigkill");
    assert!(alive(pid), "sleep {pid} runs while its parent runs");
    c.kill().expect("SIGKILL the child test binary");
    c.wait().ok();
    assert!(
        wait_gone(pid),
        "sleep {pid} survived a SIGKILLed test binary"
    );
}
