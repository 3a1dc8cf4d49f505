//! `v2k inspect` end to end: the real binary in a temporary directory, checking
//! stdout, stderr and the exit status documented in docs/inspect.md.

use std::path::Path;
use std::process::{Command, Output};

fn v2k(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_v2k"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("v2k runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A VMX with one pvscsi disk made of a descriptor and a 1 MiB flat extent.
fn linux_vm(dir: &Path, name: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.vmx")),
        format!(
            ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\ndisplayName = \"{name}\"\nguestOS = \"debian12-64\"\nnumvcpus = \"2\"\nmemSize = \"2048\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"{name}.vmdk\"\nethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\nethernet0.networkName = \"VM Network\"\nethernet0.addressType = \"vpx\"\nethernet0.generatedAddress = \"00:50:56:9a:00:01\"\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.vmdk")),
        format!("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfs\"\n\nRW 2048 VMFS \"{name}-flat.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"),
    )
    .unwrap();
    std::fs::File::create(dir.join(format!("{name}-flat.vmdk")))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
}

#[test]
fn a_clean_linux_vm_prints_a_table_and_exits_0() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(d.path(), "web01", "");
    let out = v2k(&["inspect", "web01.vmx"], d.path());
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("web01  (vmx "), "{stdout}");
    assert!(stdout.contains("scsi0 pvscsi"), "{stdout}");
    assert!(stdout.contains("1.0 MiB"), "{stdout}");
    assert!(stdout.contains("00:50:56:9a:00:01"), "{stdout}");
    assert!(stdout.contains("concerns   none"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn json_is_one_tagged_vm_per_line_then_a_summary() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(&d.path().join("a"), "a1", "");
    linux_vm(&d.path().join("b"), "b1", "");
    let out = v2k(&["inspect", "--json", "."], d.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "vm");
    assert_eq!(lines[0]["name"], "a1");
    assert_eq!(lines[1]["name"], "b1");
    assert_eq!(lines[0]["schema-version"], 1);
    assert_eq!(lines[0]["disks"][0]["capacity"], 1 << 20);
    assert_eq!(lines[0]["disks"][0]["location"]["kind"], "file");
    assert_eq!(
        lines[2],
        serde_json::json!({"type": "summary", "vms": 2, "critical": 0, "errors": 0})
    );
}

/// Two VMX files beside one another: names that become one libvirt domain name, and
/// one disk file in both without multi-writer, are only seen inspecting them together.
#[test]
fn vms_inspected_together_with_one_domain_name_and_one_disk_file_are_named() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(d.path(), "web 01", "");
    linux_vm(
        d.path(),
        "web_01",
        "scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"web 01.vmdk\"\n",
    );
    let out = v2k(&["inspect", "--json", "web 01.vmx", "web_01.vmx"], d.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["concerns"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        ids(&lines[0]),
        ["domain-name-collision", "disk-file-shared"],
        "{}",
        lines[0]
    );
    assert_eq!(
        ids(&lines[1]),
        ["domain-name-collision", "disk-file-shared"],
        "{}",
        lines[1]
    );
    assert_eq!(lines[1]["concerns"][1]["subject"], "scsi0:1");
    // Alone, neither is a concern.
    let out = v2k(&["inspect", "--json", "web_01.vmx"], d.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn a_critical_concern_exits_1() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(
        d.path(),
        "gpu",
        "pciPassthru0.present = \"TRUE\"\npciPassthru0.id = \"0000:3b:00.0\"\n",
    );
    let out = v2k(&["inspect", "gpu.vmx"], d.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("CRITICAL pci-passthrough"),
        "{}",
        text(&out.stdout)
    );
}

/// vCPU counts and memory sizes KVM cannot run (VMX keys a hostile or corrupt file
/// may hold) are critical concerns, quoted as the file says them: exit 1.
#[test]
fn hostile_vcpu_and_memory_numbers_are_critical() {
    for (extra, want) in [
        (
            "numvcpus = \"100000\"\n",
            vec![("vcpu-count-unsupported", "100000 vCPUs")],
        ),
        (
            "numvcpus = \"0\"\n",
            vec![("vcpu-count-unsupported", "0 vCPUs")],
        ),
        (
            "memsize = \"0\"\n",
            vec![("memory-size-unsupported", "memory size 0 MiB")],
        ),
        // 2^64 MiB: past u64, and its bytes past anything.
        (
            "memsize = \"18446744073709551616\"\n",
            vec![(
                "memory-size-unsupported",
                "memsize \"18446744073709551616\" is not a number",
            )],
        ),
        // Fits a u64 in MiB, overflows in bytes.
        (
            "memsize = \"17592186044416\"\n",
            vec![("memory-size-unsupported", "17592186044416 MiB")],
        ),
        (
            "numvcpus = \"100000\"\nmemsize = \"0\"\n",
            vec![
                ("memory-size-unsupported", "memory size 0 MiB"),
                ("vcpu-count-unsupported", "100000 vCPUs"),
            ],
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        linux_vm(d.path(), "hostile", extra);
        let out = v2k(&["inspect", "--json", "hostile.vmx"], d.path());
        assert_eq!(out.status.code(), Some(1), "{extra}: {}", text(&out.stderr));
        let vm: serde_json::Value =
            serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
        let got: Vec<(String, String)> = vm["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["message"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{extra}: {got:?}");
        for ((id, msg), (want_id, want_msg)) in got.iter().zip(&want) {
            assert_eq!(id, want_id, "{extra}");
            assert!(msg.contains(want_msg), "{extra}: {msg}");
        }
        assert!(vm["concerns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["severity"] == "critical"));
        // The human table says it too.
        let out = v2k(&["inspect", "hostile.vmx"], d.path());
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stdout).contains(&format!("CRITICAL {}", want[0].0)),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn a_missing_disk_is_critical_and_named() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(d.path(), "vm", "");
    std::fs::remove_file(d.path().join("vm.vmdk")).unwrap();
    let out = v2k(&["inspect", "--json", "vm.vmx"], d.path());
    assert_eq!(out.status.code(), Some(1));
    let vm: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(vm["concerns"][0]["id"], "disk-missing");
    assert_eq!(vm["concerns"][0]["severity"], "critical");
    assert_eq!(vm["disks"][0]["location"]["kind"], "missing");
}

#[test]
fn one_unreadable_file_is_reported_on_stderr_others_still_print_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(&d.path().join("good"), "good", "");
    std::fs::create_dir(d.path().join("bad")).unwrap();
    std::fs::write(
        d.path().join("bad/bad.vmx"),
        "displayName = \"x\"\nthis line is not vmx\n",
    )
    .unwrap();
    let out = v2k(&["inspect", "."], d.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains("good  (vmx"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains("bad.vmx") && err.contains("line 2"), "{err}");
    assert!(err.contains("1 path(s) could not be inspected"), "{err}");
}

#[test]
fn a_nonexistent_path_and_an_unknown_extension_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let out = v2k(&["inspect", "nope.vmx"], d.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nope.vmx"));
    std::fs::write(d.path().join("x.txt"), "").unwrap();
    let out = v2k(&["inspect", "x.txt"], d.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a .vmx, .ovf or .ova"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_path_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let out = v2k(&["inspect"], d.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

#[test]
fn control_characters_in_names_are_escaped_in_the_table() {
    let d = tempfile::tempdir().unwrap();
    linux_vm(d.path(), "vm", "displayName = \"evil|1B[2Jname\"\n");
    let out = v2k(&["inspect", "vm.vmx"], d.path());
    let stdout = text(&out.stdout);
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(stdout.contains("evil\\x1b[2Jname"), "{stdout}");
}

#[test]
fn ova_manifest_mismatch_exits_2_unless_verification_is_off() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("vm.ovf"),
        r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
<References><File ovf:href="disk1.vmdk" ovf:id="file1"/></References>
<DiskSection><Info>d</Info><Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>
<VirtualSystem ovf:id="ova1"><Info>v</Info><Name>ova1</Name>
<OperatingSystemSection ovf:id="94" vmw:osType="ubuntu64Guest"><Info>o</Info></OperatingSystemSection>
<VirtualHardwareSection><Info>h</Info>
<Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
<Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
<Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
</VirtualHardwareSection></VirtualSystem></Envelope>
"#,
    )
    .unwrap();
    std::fs::write(src.join("disk1.vmdk"), b"not the bytes the manifest hashed").unwrap();
    std::fs::write(
        src.join("vm.mf"),
        format!(
            "SHA256(disk1.vmdk)= {}\nSHA256(vm.ovf)= {}\n",
            "00".repeat(32),
            "11".repeat(32)
        ),
    )
    .unwrap();
    let st = Command::new("tar")
        .args([
            "--format=ustar",
            "-cf",
            "vm.ova",
            "-C",
            "src",
            "vm.ovf",
            "vm.mf",
            "disk1.vmdk",
        ])
        .current_dir(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    let out = v2k(&["inspect", "vm.ova"], d.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("manifest"),
        "{}",
        text(&out.stderr)
    );
    let out = v2k(
        &["inspect", "--json", "--no-verify-manifest", "vm.ova"],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let vm: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(vm["source"]["manifest"], "skipped");
    assert_eq!(vm["disks"][0]["location"]["kind"], "ova-member");
    // The member's bytes are exactly at the reported offset in the archive.
    let chunk = &vm["disks"][0]["location"]["chunks"][0];
    let (off, size) = (
        chunk["offset"].as_u64().unwrap() as usize,
        chunk["size"].as_u64().unwrap() as usize,
    );
    let ova = std::fs::read(d.path().join("vm.ova")).unwrap();
    assert_eq!(&ova[off..off + size], b"not the bytes the manifest hashed");
    assert_eq!(vm["concerns"][0]["id"], "manifest-skipped");
}

#[test]
fn a_closed_stdout_pipe_ends_quietly_with_status_0() {
    let d = tempfile::tempdir().unwrap();
    // Enough VMs that the output overflows the pipe buffer after `head` has gone.
    for i in 0..300 {
        linux_vm(
            &d.path().join(format!("vm{i:03}")),
            &format!("vm{i:03}"),
            "",
        );
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' inspect --json . | head -c 10 >/dev/null",
            env!("CARGO_BIN_EXE_v2k")
        ))
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}
