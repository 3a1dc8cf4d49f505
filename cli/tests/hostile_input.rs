//! Hostile input files given to the real binary (issue 14, SECURITY.md "Where v2k
//! writes, and what it hands to children"): special files where a file is expected
//! (a FIFO, `/dev/zero`, a link to it, a directory), YAML bombs in a wave plan, and
//! terminal escapes in names a VM, a disk or a plan carries.
//!
//! Every run goes through a watchdog: a regression that hangs (a FIFO opened for
//! reading blocks until a writer comes) or balloons kills the child after
//! [`WATCHDOG`] and fails the test instead of stalling the suite.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far above what any of these refusals takes (milliseconds), far below a CI timeout.
const WATCHDOG: Duration = Duration::from_secs(10);

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `v2k ARGS` in `cwd`, killing it (and failing) if it outlives [`WATCHDOG`].
fn v2k(args: &[&str], cwd: &Path) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_v2k"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("v2k starts");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("v2k {args:?} still running after {WATCHDOG:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo runs");
    assert!(st.success());
}

/// Whether raw terminal controls (ESC, BEL, CR, CSI as one byte) appear in `b`.
fn has_raw_controls(b: &[u8]) -> bool {
    let s = String::from_utf8_lossy(b);
    s.chars()
        .any(|c| matches!(c, '\x1b' | '\x07' | '\r' | '\u{9b}' | '\u{202e}'))
}

const VMX_HEAD: &str = ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\nguestOS = \"debian12-64\"\nnumvcpus = \"2\"\nmemSize = \"2048\"\n";

#[test]
fn a_fifo_as_vmx_vmdk_or_plan_is_refused_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    for name in ["fifo.vmx", "fifo.vmdk", "fifo.yaml", "fifo.ovf", "fifo.ova"] {
        mkfifo(&d.path().join(name));
    }
    for args in [
        &["inspect", "fifo.vmx"][..],
        &["inspect", "fifo.ovf"],
        &["inspect", "fifo.ova"],
        &["info", "fifo.vmdk"],
        &["convert", "fifo.vmdk", "-o", "out.qcow2"],
        &["wave", "check", "fifo.yaml"],
        &["wave", "run", "--dry-run", "fifo.yaml"],
    ] {
        let r = v2k(args, d.path());
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr());
        assert!(r.stderr().contains("a FIFO"), "{args:?}: {}", r.stderr());
        assert!(
            r.stderr().contains("fifo."),
            "{args:?} names the file: {}",
            r.stderr()
        );
    }
    assert!(!d.path().join("out.qcow2").exists());
}

#[test]
fn dev_zero_a_link_to_it_and_a_directory_are_refused_quickly() {
    let d = tempfile::tempdir().unwrap();
    for name in ["zero.vmx", "zero.vmdk", "zero.yaml", "zero.ova"] {
        std::os::unix::fs::symlink("/dev/zero", d.path().join(name)).unwrap();
    }
    std::fs::create_dir(d.path().join("dir.vmdk")).unwrap();
    std::fs::create_dir(d.path().join("dir.yaml")).unwrap();
    for (args, what) in [
        (&["inspect", "zero.vmx"][..], "a character device"),
        (&["inspect", "zero.ova"], "a character device"),
        (&["info", "zero.vmdk"], "a character device"),
        (&["info", "/dev/zero"], "a character device"),
        (&["wave", "check", "zero.yaml"], "a character device"),
        (&["info", "dir.vmdk"], "a directory"),
        (&["wave", "check", "dir.yaml"], "a directory"),
    ] {
        let r = v2k(args, d.path());
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr());
        assert!(r.stderr().contains(what), "{args:?}: {}", r.stderr());
    }
}

#[test]
fn an_alias_bomb_plan_is_refused_before_parsing_naming_the_plan() {
    let d = tempfile::tempdir().unwrap();
    // The measurement: a 64 KiB string aliased over and over (there 60 000
    // times, 7.7 GB and 28 s); here 5 000, under the alias count limit, so that the
    // expansion estimate is what refuses it.
    let mut plan = format!(
        "version: 1\nbig: &big \"{}\"\nwaves:\n  - name: w\n    vms:\n",
        "x".repeat(64 << 10)
    );
    for _ in 0..5_000 {
        plan.push_str("      - source: *big\n");
    }
    std::fs::write(d.path().join("bomb.yaml"), &plan).unwrap();
    let r = v2k(&["wave", "check", "bomb.yaml"], d.path());
    assert_eq!(r.code, Some(2), "{}", r.stderr());
    assert!(r.stderr().contains("bomb.yaml:"), "{}", r.stderr());
    assert!(
        r.stderr().contains("would expand the plan by more than"),
        "{}",
        r.stderr()
    );

    // And more aliases than any plan needs, whatever they point at.
    let plan = format!(
        "version: 1\nx: &x a\nwaves: [{}]\n",
        vec!["*x"; 60_000].join(",")
    );
    std::fs::write(d.path().join("many.yaml"), plan).unwrap();
    let r = v2k(&["wave", "check", "many.yaml"], d.path());
    assert_eq!(r.code, Some(2), "{}", r.stderr());
    assert!(r.stderr().contains("many.yaml:"), "{}", r.stderr());
    assert!(r.stderr().contains("aliases"), "{}", r.stderr());
}

#[test]
fn deep_nesting_in_a_plan_is_refused_before_parsing_naming_the_plan() {
    let d = tempfile::tempdir().unwrap();
    // The measurement: 100 000 `[` took 22 s to reject.
    let plan = format!("version: 1\nwaves: {}\n", "[".repeat(100_000));
    std::fs::write(d.path().join("deep.yaml"), plan).unwrap();
    let mut block = String::from("version: 1\nwaves:\n");
    for depth in 1..200 {
        block.push_str(&" ".repeat(depth));
        block.push_str("- x:\n");
    }
    std::fs::write(d.path().join("deep-block.yaml"), block).unwrap();
    for name in ["deep.yaml", "deep-block.yaml"] {
        let r = v2k(&["wave", "check", name], d.path());
        assert_eq!(r.code, Some(2), "{name}: {}", r.stderr());
        assert!(r.stderr().contains(&format!("{name}:")), "{}", r.stderr());
        assert!(r.stderr().contains("nesting deeper than"), "{}", r.stderr());
    }
}

#[test]
fn ddb_values_with_escape_sequences_never_reach_the_terminal_raw() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("evil.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW 2048 VMFS \"evil-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\nddb.comment = \"\x1b[2Jcleared\x07\"\nddb.\x1b]0;title\x07 = \"x\u{202e}gpj.exe\"\n",
    )
    .unwrap();
    std::fs::File::create(d.path().join("evil-flat.vmdk"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let r = v2k(&["info", "evil.vmdk"], d.path());
    assert_eq!(r.code, Some(0), "{}", r.stderr());
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout());
    assert!(
        r.stdout().contains("\\x1b[2Jcleared\\x07"),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("x\\u{202e}gpj.exe"), "{}", r.stdout());

    // An error that quotes a name from the disk: an extent name with ESC, refused.
    std::fs::write(
        d.path().join("bad.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW 2048 VMFS \"../\x1b[31mred\x07-flat.vmdk\"\n",
    )
    .unwrap();
    for args in [
        &["info", "bad.vmdk"][..],
        &["convert", "bad.vmdk", "-o", "bad.qcow2"],
    ] {
        let r = v2k(args, d.path());
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr());
        assert!(!has_raw_controls(&r.stderr), "{args:?}: {:?}", r.stderr());
        assert!(!has_raw_controls(&r.stdout), "{args:?}: {:?}", r.stdout());
        assert!(r.stderr().contains("[31mred"), "{args:?}: {}", r.stderr());
    }
}

#[test]
fn a_vmx_display_name_with_escapes_is_shown_escaped() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("vm.vmx"),
        format!(
            "{VMX_HEAD}displayName = \"web\x1b[2J\x07\r\u{9b}31m\u{202e}01\"\nethernet0.present = \"TRUE\"\nethernet0.networkName = \"net\x1b[1m\"\n"
        ),
    )
    .unwrap();
    let r = v2k(&["inspect", "vm.vmx"], d.path());
    assert!(r.code == Some(0) || r.code == Some(1), "{}", r.stderr());
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout());
    assert!(!has_raw_controls(&r.stderr), "{:?}", r.stderr());
    assert!(
        r.stdout()
            .contains("web\\x1b[2J\\x07\\r\\u{9b}31m\\u{202e}01"),
        "{}",
        r.stdout()
    );

    // JSON stays JSON: the name is there, escaped by JSON's own rules.
    let r = v2k(&["inspect", "--json", "vm.vmx"], d.path());
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout());
    let first: serde_json::Value =
        serde_json::from_str(r.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(first["name"], "web\x1b[2J\x07\r\u{9b}31m\u{202e}01");
}

#[test]
fn a_plan_with_escapes_in_names_is_shown_escaped() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("vm.vmx"),
        format!("{VMX_HEAD}displayName = \"vm\"\n"),
    )
    .unwrap();
    std::fs::write(
        d.path().join("plan.yaml"),
        "version: 1\nwaves:\n  - name: \"w\\e[2J\\a\"\n    vms:\n      - source: vm.vmx\n        name: \"v\\e]0;pwned\\a\"\n      - source: \"missing\\e[5m.vmx\"\n",
    )
    .unwrap();
    let r = v2k(&["wave", "check", "plan.yaml"], d.path());
    assert_eq!(r.code, Some(2), "{}", r.stderr());
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout());
    assert!(!has_raw_controls(&r.stderr), "{:?}", r.stderr());
    assert!(r.stderr().contains("plan.yaml:"), "{}", r.stderr());
    assert!(
        r.stderr().contains("[2J"),
        "the wave name is quoted: {}",
        r.stderr()
    );

    // Valid names, sources whose errors quote an escape: a plan error (missing file)
    // and the WILL FAIL line (an unreadable OVA).
    std::fs::write(d.path().join("bad\x1b[5m.ova"), "junk").unwrap();
    std::fs::write(
        d.path().join("plan2.yaml"),
        "version: 1\nwaves:\n  - name: w1\n    vms:\n      - source: \"bad\\e[5m.ova\"\n        name: b\n",
    )
    .unwrap();
    let r = v2k(&["wave", "check", "plan2.yaml"], d.path());
    assert_eq!(r.code, Some(1), "{}", r.stderr());
    assert!(!has_raw_controls(&r.stdout), "{:?}", r.stdout());
    assert!(!has_raw_controls(&r.stderr), "{:?}", r.stderr());
    assert!(
        r.stdout().contains("WILL FAIL: cannot be read: "),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("bad\\x1b[5m.ova"), "{}", r.stdout());
    std::fs::write(
        d.path().join("plan3.yaml"),
        "version: 1\nwaves:\n  - name: w1\n    vms:\n      - source: \"miss\\e[5m.vmx\"\n        name: b\n",
    )
    .unwrap();
    let r = v2k(&["wave", "check", "plan3.yaml"], d.path());
    assert_eq!(r.code, Some(2), "{}", r.stderr());
    assert!(!has_raw_controls(&r.stderr), "{:?}", r.stderr());
    assert!(r.stderr().contains("miss\\x1b[5m.vmx"), "{}", r.stderr());
}
