//! The first-boot validation agent: a systemd oneshot unit and a POSIX sh script that,
//! once the converted guest is up, write ONE line to the first serial port:
//!
//! ```text
//! V2K-AGENT {"v":1,"ok":true,"boot":true,"root-rw":true,"mounts":[{"target":"/data","ok":true}],
//!            "nics":[{"name":"ens192","mac":"00:50:56:3a:c1:01","ipv4":["10.0.2.15/24"]}],
//!            "failed-units":[],"uptime":21.4,
//!            "firmware":{"efi":true,"secure-boot":false},
//!            "gateways":[{"via":"10.0.2.2","dev":"ens192"}],"dns":["10.0.2.3"],
//!            "perf":{"cpu":[51234,12],"disks":[["vda",4100,2050,380,900]],"nics":[["ens192",0,0]],
//!                    "probe":{"cpu-ms":61.2,"reads":64,"read-p50-ms":0.412,"read-p95-ms":1.873}}}
//! ```
//!
//! (on one line). `ok` is true when root is read-write and every fstab mount is present.
//! After a report with `ok` true the agent disables and deletes itself, unless installed
//! with keep; otherwise it stays and reports again on the next boot. In a validation
//! boot (the fw_cfg entry `v2k_kvm_target::agent::POWEROFF_FW_CFG` is present) it then powers the guest
//! off. The format is documented in docs/inject.md.

pub use v2k_kvm_target::agent::LINE_PREFIX;
pub const SCRIPT_PATH: &str = "/usr/local/sbin/v2k-agent";
pub const UNIT_PATH: &str = "/etc/systemd/system/v2k-agent.service";
pub const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/v2k-agent.service";

/// The unit: after the network is online (bounded by the script's own wait), once.
pub fn unit() -> String {
    format!(
        "# Installed by v2k inject: reports the converted guest's state on ttyS0 once.\n\
         [Unit]\n\
         Description=v2k first-boot validation agent\n\
         Wants=network-online.target\n\
         After=network-online.target local-fs.target remote-fs.target\n\
         ConditionPathExists={SCRIPT_PATH}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={SCRIPT_PATH}\n\
         TimeoutStartSec=180\n\
         StandardOutput=journal\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The script; `keep` leaves it installed after a successful report; `services` are
/// the systemd services the source enabled, whose state it reports (`services`).
/// Names outside [`is_unit_name`] are left out: they go into a shell word list.
pub fn script(keep: bool, services: &[String]) -> String {
    let units: Vec<&str> = services
        .iter()
        .map(String::as_str)
        .filter(|u| is_unit_name(u))
        .take(MAX_SERVICES)
        .collect();
    SCRIPT
        .replace("@KEEP@", if keep { "1" } else { "0" })
        .replace("@SERVICES@", &units.join(" "))
}

/// The most services the agent reports on (a guest's own list; the report line stays
/// well under the validator's `MAX_LINE`).
pub const MAX_SERVICES: usize = 64;

/// A plain `NAME.service` (letters, digits, `@._:-`): safe unquoted in the script's
/// word list and in `systemctl` arguments.
pub fn is_unit_name(u: &str) -> bool {
    u.len() <= 128
        && u.ends_with(".service")
        && u.len() > ".service".len()
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._:-".contains(&b))
}

// POSIX sh only (dash on Debian, bash elsewhere); every value put into the JSON goes
// through esc(), which drops quotes, backslashes and control characters, since names
// of units and interfaces come from the guest.
const SCRIPT: &str = r#"#!/bin/sh
# v2k first-boot validation agent, installed by `v2k inject`. Writes one line
# "V2K-AGENT {json}" to /dev/ttyS0, then removes itself after a successful report.
KEEP=@KEEP@
# The services the source enabled (read by v2k at inspection): their state is reported.
SERVICES="@SERVICES@"
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
esc() { printf '%s' "$1" | tr -d '"\\' | tr -d '\000-\037'; }

# Bounded wait (30 s) for an IPv4 address on any interface but lo.
i=0
while [ $i -lt 60 ]; do
    if ip -o -4 addr show scope global 2>/dev/null | grep -q inet; then break; fi
    sleep 0.5; i=$((i + 1))
done

root_rw=false
if awk '$2 == "/" { split($4, o, ","); for (k in o) if (o[k] == "rw") f = 1 } END { exit !f }' /proc/mounts; then
    root_rw=true
fi

ok=$root_rw
mounts=
sep=
while read -r spec target fstype opts rest; do
    case "$spec" in ''|'#'*) continue ;; esac
    case "$fstype" in swap|none) continue ;; esac
    case "$target" in /|none|'') continue ;; esac
    case ",$opts," in *,noauto,*) continue ;; esac
    if mountpoint -q "$target" 2>/dev/null; then m=true; else m=false; ok=false; fi
    mounts="$mounts$sep{\"target\":\"$(esc "$target")\",\"ok\":$m}"
    sep=,
done < /etc/fstab

nics=
sep=
for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] && continue
    mac=$(cat "$d/address" 2>/dev/null)
    addrs=
    asep=
    for a in $(ip -o -4 addr show dev "$n" 2>/dev/null | awk '{print $4}'); do
        addrs="$addrs$asep\"$(esc "$a")\""
        asep=,
    done
    nics="$nics$sep{\"name\":\"$(esc "$n")\",\"mac\":\"$(esc "$mac")\",\"ipv4\":[$addrs]}"
    sep=,
done

failed=
sep=
for u in $(systemctl --failed --plain --no-legend 2>/dev/null | awk '{print $1}'); do
    failed="$failed$sep\"$(esc "$u")\""
    sep=,
done
up=$(cut -d' ' -f1 /proc/uptime)

# Firmware: EFI when the kernel was started by it; Secure Boot from the SecureBoot
# variable (4 attribute bytes, then 1 when enforcing). null on BIOS.
efi=false
sb=null
if [ -d /sys/firmware/efi ]; then
    efi=true
    sb=false
    v=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
    if [ -r "$v" ] && [ "$(od -An -t u1 -j4 -N1 "$v" 2>/dev/null | tr -d ' ')" = 1 ]; then sb=true; fi
fi

# Default IPv4 routes (gateway, interface) and the resolvers in use: systemd-resolved's
# upstream list when it runs (its /etc/resolv.conf names only the local stub).
gws=
sep=
for r in $(ip -4 route show default 2>/dev/null | awk '{ v = "-"; d = "-"; for (i = 1; i < NF; i++) { if ($i == "via") v = $(i + 1); if ($i == "dev") d = $(i + 1) } print v "|" d }' | head -n 8); do
    gws="$gws$sep{\"via\":\"$(esc "${r%%|*}")\",\"dev\":\"$(esc "${r#*|}")\"}"
    sep=,
done
rc=/etc/resolv.conf
[ -r /run/systemd/resolve/resolv.conf ] && rc=/run/systemd/resolve/resolv.conf
dns=
sep=
for d in $(awk '$1 == "nameserver" { print $2 }' "$rc" 2>/dev/null | head -n 8); do
    dns="$dns$sep\"$(esc "$d")\""
    sep=,
done

# Does each default gateway answer? ping when the guest has it; else a TCP connection
# to its port 53 (bash's /dev/tcp: bash is in every Debian and RHEL install), which,
# refused or accepted, resolves the gateway's link-layer address: a neighbour entry
# with one means the gateway answered. null when the guest has neither tool.
gw_answers() {
    if command -v ping >/dev/null 2>&1; then
        ping -c 1 -W 2 "$1" >/dev/null 2>&1 && { echo true; return; }
    elif ! command -v bash >/dev/null 2>&1; then
        echo null; return
    fi
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/53"' "$1" >/dev/null 2>&1
    if ip neigh show "$1" dev "$2" 2>/dev/null | grep -q 'lladdr.*\(REACHABLE\|STALE\|DELAY\|PROBE\|PERMANENT\)'; then
        echo true
    else
        echo false
    fi
}
# Does a resolver answer? One DNS query (". NS", id 0x5632) over UDP through bash's
# /dev/udp; any reply with our id counts, even a refusal: the server is there and
# speaks DNS. null without bash.
dns_answers() {
    command -v bash >/dev/null 2>&1 || { echo null; return; }
    r=$(timeout 3 bash -c 'exec 3<>"/dev/udp/$0/53" || exit 1; printf "\x56\x32\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01" >&3; dd bs=512 count=1 <&3 2>/dev/null | od -An -tx1 -N2' "$1" 2>/dev/null | tr -d ' \n')
    if [ "$r" = 5632 ]; then echo true; else echo false; fi
}
gwa=
sep=
for r in $(ip -4 route show default 2>/dev/null | awk '{ v = "-"; d = "-"; for (i = 1; i < NF; i++) { if ($i == "via") v = $(i + 1); if ($i == "dev") d = $(i + 1) } print v "|" d }' | head -n 8); do
    v=${r%%|*}
    [ "$v" = - ] && continue
    gwa="$gwa$sep[\"$(esc "$v")\",$(gw_answers "$v" "${r#*|}")]"
    sep=,
done
dnsa=
sep=
for d in $(awk '$1 == "nameserver" { print $2 }' "$rc" 2>/dev/null | head -n 8); do
    dnsa="$dnsa$sep[\"$(esc "$d")\",$(dns_answers "$d")]"
    sep=,
done

# The source's services: active; "exited" (a oneshot that ran and succeeded);
# "skipped" (a start condition failed); "missing" (no such unit); else systemd's
# ActiveState. Units still starting get up to 30 s.
svc_state() {
    p=$(systemctl show -p LoadState -p ActiveState -p Result -p ConditionResult -p Type "$1" 2>/dev/null)
    get() { printf '%s\n' "$p" | sed -n "s/^$1=//p" | head -n 1; }
    a=$(get ActiveState)
    if [ "$(get LoadState)" = not-found ]; then echo missing
    elif [ "$a" = active ]; then echo active
    elif [ "$(get ConditionResult)" = no ]; then echo skipped
    elif [ "$a" = inactive ] && [ "$(get Type)" = oneshot ] && [ "$(get Result)" = success ]; then echo exited
    else echo "${a:-unknown}"
    fi
}
i=0
while [ $i -lt 30 ] && [ -n "$SERVICES" ]; do
    busy=
    for u in $SERVICES; do
        case "$(systemctl is-active "$u" 2>/dev/null)" in activating|reloading|deactivating) busy=1 ;; esac
    done
    [ -z "$busy" ] && break
    sleep 1; i=$((i + 1))
done
services=
sep=
for u in $SERVICES; do
    services="$services$sep[\"$(esc "$u")\",\"$(svc_state "$u")\"]"
    sep=,
done

# Performance counters since boot (docs/evidence.md, "after"): CPU ticks (user..steal
# summed, and steal) from /proc/stat; per whole disk the reads and writes completed
# and the milliseconds spent on them from /proc/diskstats; per NIC the packets
# dropped. Read once: no wait added to the boot. %.0f, not %d: mawk's %d is 32-bit.
cpu=$(awk '$1 == "cpu" && NF >= 9 { for (i = 2; i <= 9; i++) t += $i; printf "[%.0f,%.0f]", t, $9; exit }' /proc/stat 2>/dev/null)
disks=$(awk '$3 ~ /^(vd|sd|hd|xvd)[a-z]+$/ || $3 ~ /^nvme[0-9]+n[0-9]+$/ { printf "%s[\"%s\",%.0f,%.0f,%.0f,%.0f]", s, $3, $4, $7, $8, $11; s = "," }' /proc/diskstats 2>/dev/null)
drops=
sep=
for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] && continue
    rx=$(tr -cd 0-9 < "$d/statistics/rx_dropped" 2>/dev/null | cut -c1-19)
    tx=$(tr -cd 0-9 < "$d/statistics/tx_dropped" 2>/dev/null | cut -c1-19)
    drops="$drops$sep[\"$(esc "$n")\",${rx:-0},${tx:-0}]"
    sep=,
done

# A short fixed probe (docs/evidence.md, "The probe"), the same measurement on both
# sides of a migration: a CPU loop of fixed work, timed; then up to 64 random 4 KiB
# reads with O_DIRECT from the root disk within 3 s (but at least 8, so a guest too busy
# to do 2 in 3 s still reports: the window opens after dd's start-up cost is measured),
# each timed less the cost of starting dd (its median on /dev/zero), as p50 and p95
# (nearest rank). A figure the
# guest cannot make (no dd with iflag=direct, no block device, a clock that did not
# move) is left out, never 0. Clock: date's nanoseconds, else /proc/uptime (10 ms).
now_us() {
    t=$(date +%s%N 2>/dev/null)
    case "$t" in
        ''|*[!0-9]*) awk '{ printf "%.0f\n", $1 * 1000000 }' /proc/uptime 2>/dev/null ;;
        *) echo "${t%???}" ;;
    esac
}
probe=
psep=
p0=$(now_us)
if awk 'BEGIN { for (i = 0; i < 500000; i++) s += i % 7; exit !(s > 0) }' 2>/dev/null; then
    p1=$(now_us)
    if [ -n "$p0" ] && [ -n "$p1" ] && [ "$p1" -gt "$p0" ]; then
        probe="\"cpu-ms\":$(awk -v a="$p0" -v b="$p1" 'BEGIN { printf "%.1f", (b - a) / 1000 }')"
        psep=,
    fi
fi
rdev=$(awk '$2 == "/" { print $1; exit }' /proc/mounts 2>/dev/null)
[ -b "$rdev" ] || rdev=/dev/$(awk '$3 ~ /^(vd|sd|hd|xvd)[a-z]+$/ || $3 ~ /^nvme[0-9]+n[0-9]+$/ { print $3; exit }' /proc/diskstats 2>/dev/null)
rblocks=0
if [ -b "$rdev" ]; then
    rreal=$(readlink -f "$rdev" 2>/dev/null)
    rblocks=$(tr -cd 0-9 < "/sys/class/block/${rreal##*/}/size" 2>/dev/null | cut -c1-19)
    rblocks=$(( ${rblocks:-0} / 8 ))
fi
if [ "$rblocks" -gt 0 ] && dd if="$rdev" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; then
    spawn=
    for k in 1 2 3 4 5 6 7 8; do
        a=$(now_us); dd if=/dev/zero of=/dev/null bs=4096 count=1 2>/dev/null; b=$(now_us)
        spawn="$spawn $((b - a))"
    done
    pend=$(( $(now_us) + 3000000 ))
    reads=
    nreads=0
    for off in $(awk -v n="$rblocks" -v s="$$" 'BEGIN { srand(s); for (i = 0; i < 64; i++) printf "%.0f\n", int(rand() * n) }'); do
        a=$(now_us)
        dd if="$rdev" of=/dev/null bs=4096 count=1 skip="$off" iflag=direct 2>/dev/null || break
        b=$(now_us)
        reads="$reads $((b - a))"
        nreads=$((nreads + 1))
        [ "$nreads" -ge 8 ] && [ "$b" -gt "$pend" ] && break
    done
    # The spawn median, then each read less it (floored at 0), sorted; p50 and p95.
    lat=$(printf '%s\n' $spawn | sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }')
    pct=$(printf '%s\n' $reads | awk -v z="${lat:-0}" 'NF { d = $1 - z; print (d > 0 ? d : 0) }' | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR >= 2) { r50 = int((NR * 50 + 99) / 100); r95 = int((NR * 95 + 99) / 100); printf "\"reads\":%d,\"read-p50-ms\":%.3f,\"read-p95-ms\":%.3f", NR, v[r50] / 1000, v[r95] / 1000 } }')
    if [ -n "$pct" ]; then probe="$probe$psep$pct"; fi
fi
perf="{\"cpu\":${cpu:-[0,0]},\"disks\":[$disks],\"nics\":[$drops],\"probe\":{$probe}}"

line="V2K-AGENT {\"v\":1,\"ok\":$ok,\"boot\":true,\"root-rw\":$root_rw,\"mounts\":[$mounts],\"nics\":[$nics],\"failed-units\":[$failed],\"uptime\":$up,\"firmware\":{\"efi\":$efi,\"secure-boot\":$sb},\"gateways\":[$gws],\"dns\":[$dns],\"gateway-answers\":[$gwa],\"dns-answers\":[$dnsa],\"services\":[$services],\"perf\":$perf}"
echo "$line"
printf '%s\r\n' "$line" > /dev/ttyS0 2>/dev/null
mkdir -p /var/lib/v2k && printf '%s\n' "$line" > /var/lib/v2k/agent-report.txt

if [ "$ok" = true ] && [ "$KEEP" = 0 ]; then
    systemctl disable v2k-agent.service >/dev/null 2>&1
    rm -f /etc/systemd/system/multi-user.target.wants/v2k-agent.service \
          /etc/systemd/system/v2k-agent.service /usr/local/sbin/v2k-agent
fi

# A validation boot by v2k's validator carries a QEMU fw_cfg entry asking for a
# power-off N seconds after the report (time for the console screenshot). It makes
# the shutdown clean on guests that ignore ACPI (no logind); without the entry, as
# on every production boot, nothing happens here.
poweroff=/sys/firmware/qemu_fw_cfg/by_name/opt/org.v2k/poweroff-after/raw
[ -e "$poweroff" ] || modprobe qemu_fw_cfg 2>/dev/null
if [ -r "$poweroff" ]; then
    delay=$(tr -cd 0-9 < "$poweroff" | cut -c1-3)
    sleep "${delay:-5}"
    systemctl --no-block poweroff
fi
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_carries_the_keep_flag_and_prefix() {
        assert!(script(true, &[]).contains("KEEP=1\n"));
        assert!(script(false, &[]).contains("KEEP=0\n"));
        assert!(script(false, &[]).contains(&format!("line=\"{LINE_PREFIX} {{")));
        assert!(unit().contains(&format!("ExecStart={SCRIPT_PATH}")));
        let fw_cfg = v2k_kvm_target::agent::POWEROFF_FW_CFG;
        assert!(script(false, &[]).contains(&format!("/by_name/{fw_cfg}/raw")));
    }

    /// The performance block of the script, run by `sh` on this machine's own /proc
    /// and /sys (a Linux like the guest's): its JSON parses, the CPU ticks are real and
    /// every NIC but lo is listed.
    /// Runs the script's lines from `from` up to `to` with `sh` on this machine, after
    /// the script's own `esc`, then `print` (a shell line printing JSON); the JSON and
    /// its text.
    fn run_block(from: &str, to: &str, print: &str) -> (serde_json::Value, String) {
        let s = script(false, &[]);
        let start = s.find(from).unwrap();
        let end = start + s[start..].find(to).unwrap();
        let esc_at = s.find("esc() {").unwrap();
        let esc = s[esc_at..].lines().next().unwrap();
        let body = format!("{esc}\n{}\n{print}\n", &s[start..end]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&body)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (v, text)
    }

    #[test]
    fn the_performance_block_reads_this_machines_counters_as_json() {
        let (v, text) = run_block("cpu=$(", "\n\nline=", "printf '%s' \"$perf\"");
        let cpu = v["cpu"].as_array().unwrap();
        assert!(cpu[0].as_u64().unwrap() > 0, "{text}");
        assert!(
            cpu[1].as_u64().unwrap() <= cpu[0].as_u64().unwrap(),
            "{text}"
        );
        let nics = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "lo")
            .count();
        assert_eq!(v["nics"].as_array().unwrap().len(), nics, "{text}");
        for d in v["disks"].as_array().unwrap() {
            assert_eq!(d.as_array().unwrap().len(), 5, "{text}");
        }
    }

    /// The performance block with some of its input files replaced (`(path, by)`), as
    /// the JSON it prints.
    fn run_perf_block(replace: &[(&str, &std::path::Path)]) -> (serde_json::Value, String) {
        let s = script(false, &[]);
        let start = s.find("cpu=$(").unwrap();
        let end = start + s[start..].find("\n\nline=").unwrap();
        let mut block = s[start..end].to_string();
        for (path, by) in replace {
            assert!(block.contains(path), "{path} not read by the block");
            block = block.replace(path, &by.display().to_string());
        }
        let esc_at = s.find("esc() {").unwrap();
        let esc = s[esc_at..].lines().next().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{esc}\n{block}\nprintf '%s' \"$perf\"\n"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (v, text)
    }

    /// A loop device over a file, detached when dropped.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// The fixed probe against a real block device: a loop device this test makes
    /// stands for the root disk (`/proc/mounts` replaced by a file naming it as `/`;
    /// a guest's own root disk is what the agent reads, and this machine's may not be
    /// openable). The CPU loop is timed, and the O_DIRECT reads give a count, p50 and
    /// p95 — the time bound (3 s) decides how many, so only "at least two" is asserted.
    #[test]
    fn the_probe_times_a_cpu_loop_and_direct_reads_of_the_root_disk() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("root.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .expect("losetup (util-linux), run as root");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let mounts = d.path().join("mounts");
        std::fs::write(&mounts, format!("{} / ext4 rw,relatime 0 0\n", dev.0)).unwrap();
        let (v, text) = run_perf_block(&[("/proc/mounts", &mounts)]);
        let p = &v["probe"];
        assert!(p["cpu-ms"].as_f64().unwrap() > 0.0, "{text}");
        let reads = p["reads"].as_u64().unwrap();
        assert!((2..=64).contains(&reads), "{text}");
        let (p50, p95) = (
            p["read-p50-ms"].as_f64().unwrap(),
            p["read-p95-ms"].as_f64().unwrap(),
        );
        assert!(0.0 <= p50 && p50 <= p95, "{text}");
        // The figures parse as the validator reads them.
        let perf: v2k_validator::perf::Probe = serde_json::from_value(p.clone()).unwrap();
        assert_eq!(perf.reads, Some(reads as u32));
        drop(dev);

        // No block device for / and no whole disk: no read figures — absent, not 0.
        let empty = d.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        std::fs::write(&mounts, "rootfs / rootfs rw 0 0\n").unwrap();
        let (v, text) = run_perf_block(&[("/proc/mounts", &mounts), ("/proc/diskstats", &empty)]);
        let p = v["probe"].as_object().unwrap();
        assert!(p.contains_key("cpu-ms"), "{text}");
        for k in ["reads", "read-p50-ms", "read-p95-ms"] {
            assert!(!p.contains_key(k), "{text}");
        }
    }

    /// The firmware, route and resolver block, run by `sh` on this machine: valid JSON
    /// pieces with this machine's default route and resolvers.
    #[test]
    fn the_network_block_reads_this_machines_routes_and_resolvers() {
        let (v, text) = run_block(
            "# Firmware: EFI",
            "\n# Performance counters",
            "printf '{\"firmware\":{\"efi\":%s,\"secure-boot\":%s},\"gateways\":[%s],\"dns\":[%s]}' \
             \"$efi\" \"$sb\" \"$gws\" \"$dns\"",
        );
        assert_eq!(
            v["firmware"]["efi"].as_bool().unwrap(),
            std::path::Path::new("/sys/firmware/efi").is_dir(),
            "{text}"
        );
        let routes = std::process::Command::new("ip")
            .args(["-4", "route", "show", "default"])
            .output()
            .unwrap();
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert_eq!(
            v["gateways"].as_array().unwrap().len(),
            routes.lines().count().min(8),
            "{text} vs {routes}"
        );
        for g in v["gateways"].as_array().unwrap() {
            assert!(routes.contains(g["via"].as_str().unwrap()), "{text}");
        }
        let rc = ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let servers = rc.lines().filter(|l| l.starts_with("nameserver")).count();
        assert_eq!(v["dns"].as_array().unwrap().len(), servers.min(8), "{text}");
    }

    /// The reachability and services block, run by `sh` on this machine: each default
    /// gateway and each resolver gets a yes/no (this machine has bash), a neighbour
    /// that never answered is a no, and a service systemd cannot tell of is reported
    /// with a state, never dropped.
    #[test]
    fn the_reachability_block_reports_each_gateway_resolver_and_service() {
        let s = script(false, &["nosuch-v2k-test.service".into()]);
        let start = s.find("# Default IPv4 routes").unwrap();
        let end = s.find("\n# Performance counters").unwrap();
        let esc_at = s.find("esc() {").unwrap();
        let esc = s[esc_at..].lines().next().unwrap();
        let services = s.lines().find(|l| l.starts_with("SERVICES=")).unwrap();
        let body = format!(
            "{esc}\n{services}\n{}\n\
             printf '{{\"gateway-answers\":[%s],\"dns-answers\":[%s],\"services\":[%s],\"silent\":%s}}' \
             \"$gwa\" \"$dnsa\" \"$services\" \"$(gw_answers 203.0.113.77 lo)\"\n",
            &s[start..end]
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&body)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let routes = std::process::Command::new("ip")
            .args(["-4", "route", "show", "default"])
            .output()
            .unwrap();
        let vias = String::from_utf8_lossy(&routes.stdout)
            .lines()
            .filter(|l| l.contains(" via "))
            .count();
        let gwa = v["gateway-answers"].as_array().unwrap();
        assert_eq!(gwa.len(), vias.min(8), "{text}");
        for g in gwa {
            assert!(g[1].is_boolean(), "{text}");
        }
        for d in v["dns-answers"].as_array().unwrap() {
            assert!(d[1].is_boolean(), "{text}");
        }
        assert_eq!(v["silent"], false, "{text}");
        let svc = v["services"].as_array().unwrap();
        assert_eq!(svc.len(), 1, "{text}");
        assert_eq!(svc[0][0], "nosuch-v2k-test.service", "{text}");
        assert!(!svc[0][1].as_str().unwrap().is_empty(), "{text}");
    }

    #[test]
    fn only_plain_service_names_reach_the_script() {
        let s = script(
            false,
            &[
                "ssh.service".into(),
                "getty@tty1.service".into(),
                "evil;rm -rf /.service".into(),
                "a$(x).service".into(),
                "cron.timer".into(),
            ],
        );
        assert!(
            s.contains("SERVICES=\"ssh.service getty@tty1.service\"\n"),
            "{}",
            s.lines().find(|l| l.starts_with("SERVICES=")).unwrap()
        );
    }

    #[test]
    fn script_is_valid_posix_sh() {
        // dash -n parses without running; skip only when no POSIX shell exists at all.
        let dir = std::env::temp_dir().join(format!("v2k-agent-{}", std::process::id()));
        std::fs::write(&dir, script(false, &[])).unwrap();
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg(&dir)
            .status()
            .unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(st.success());
    }
}
