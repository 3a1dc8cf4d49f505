//! The Windows first-boot service: a service installed offline in the SYSTEM hive that
//! starts a PowerShell script once Windows is up. The script
//!
//! 1. installs every copied driver package with `pnputil -i -a` (the syntax Windows 7
//!    through Server 2025 accept),
//! 2. uninstalls VMware Tools (`msiexec /x {product} /qn /norestart`),
//! 3. installs the QEMU guest agent when its MSI was supplied,
//! 4. brings offline disks online (SAN policy OnlineAll, then `online disk` per disk),
//! 5. restores the static IPv4 settings recorded from the source NICs, on the adapter
//!    with the same MAC (the target keeps the MACs),
//! 6. writes one `V2K-AGENT {json}` line to COM1, the same format as the Linux agent
//!    (docs/inject.md), with each drive letter as a "mount" and each failed step as a
//!    "failed unit".
//!
//! Each step that succeeds leaves a `done-*` file and is not repeated. The script never
//! reboots the guest (`/norestart`, no pnputil `/reboot`): a step that needs a reboot
//! completes at the next one the user makes. Retries are capped: each run counts an
//! attempt, and after [`DEFAULT_MAX_ATTEMPTS`] runs with failures it reports
//! `"gave-up":true` and disables itself, so a driver that keeps failing can never
//! cause a reboot loop. On success it disables itself too.
//!
//! Every value put into the script is either ours or validated (safe file names,
//! GUIDs, dotted IPv4 addresses, MACs) and then written as a single-quoted PowerShell
//! literal.

use super::edits::{Edit, HiveName};
use super::registry::RegValue;

/// The service name.
pub(crate) const SERVICE: &str = "v2k-firstboot";
/// The folder under the system root holding the script, its log and state.
pub const DIR: &str = "v2k";
pub(crate) const SCRIPT: &str = "firstboot.ps1";
/// Runs with failures before the script gives up and disables itself.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Service type "own process", start "automatic", error control "ignore" (the
/// service host is cmd.exe, which never reports to the SCM; see [`image_path`]).
const SERVICE_OWN_PROCESS: u32 = 0x10;
const START_AUTO: u32 = 2;
const ERROR_IGNORE: u32 = 0;

/// What the script does.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// INF paths relative to `%SystemRoot%\Drivers\VirtIO` (`viostor\viostor.inf`).
    pub infs: Vec<String>,
    /// VMware Tools MSI product codes (validated GUIDs).
    pub msi_uninstall: Vec<String>,
    /// The guest agent MSI file name in `%SystemRoot%\v2k`.
    pub guest_agent: Option<String>,
    /// Static IPv4 settings: (MAC as `00:50:56:AA:BB:CC`, addresses, masks, gateways, dns).
    pub static_ips: Vec<StaticConfig>,
    /// Drive letters expected present (`C:`).
    pub drives: Vec<String>,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Default)]
pub struct StaticConfig {
    pub mac: String,
    pub addresses: Vec<String>,
    pub masks: Vec<String>,
    pub gateways: Vec<String>,
    pub dns: Vec<String>,
}

/// A single-quoted PowerShell literal (quotes doubled).
fn ps(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ps_array(items: &[String]) -> String {
    let parts: Vec<String> = items.iter().map(|s| ps(s)).collect();
    format!("@({})", parts.join(", "))
}

/// The service's command line. cmd.exe's `start` detaches PowerShell, so the script
/// keeps running when the SCM gives up on cmd.exe (which never reports "running");
/// with ErrorControl "ignore" that costs one event-log line.
pub(crate) fn image_path() -> String {
    format!(
        "%SystemRoot%\\System32\\cmd.exe /c start \"v2k\" /b \
         %SystemRoot%\\System32\\WindowsPowerShell\\v1.0\\powershell.exe -NoProfile \
         -NonInteractive -ExecutionPolicy Bypass -File %SystemRoot%\\{DIR}\\{SCRIPT}"
    )
}

/// The service's registry values.
pub(crate) fn service_edits(cs: &str) -> Vec<Edit> {
    let key: Vec<String> = [cs, "Services", SERVICE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let e = |value: &str, data: RegValue| Edit {
        step: "first-boot",
        hive: HiveName::System,
        key: key.clone(),
        value: value.to_string(),
        data,
    };
    vec![
        e("Type", RegValue::Dword(SERVICE_OWN_PROCESS)),
        e("Start", RegValue::Dword(START_AUTO)),
        e("ErrorControl", RegValue::Dword(ERROR_IGNORE)),
        e("ImagePath", RegValue::ExpandSz(image_path())),
        e("DisplayName", RegValue::Sz("v2k first boot".into())),
        e(
            "Description",
            RegValue::Sz(
                "Installs the virtio drivers, removes VMware Tools and reports to v2k once \
                 after a migration; disables itself."
                    .into(),
            ),
        ),
        e("ObjectName", RegValue::Sz("LocalSystem".into())),
    ]
}

/// The script.
pub fn script(p: &Plan) -> String {
    let statics: Vec<String> = p
        .static_ips
        .iter()
        .map(|s| {
            format!(
                "@{{ Mac = {}; Addresses = {}; Masks = {}; Gateways = {}; Dns = {} }}",
                ps(&s.mac.to_ascii_uppercase()),
                ps_array(&s.addresses),
                ps_array(&s.masks),
                ps_array(&s.gateways),
                ps_array(&s.dns)
            )
        })
        .collect();
    let mut head = String::new();
    head.push_str(&format!("$MaxAttempts = {}\n", p.max_attempts.max(1)));
    head.push_str(&format!("$Service = {}\n", ps(SERVICE)));
    head.push_str(&format!("$Infs = {}\n", ps_array(&p.infs)));
    head.push_str(&format!("$ToolsCodes = {}\n", ps_array(&p.msi_uninstall)));
    head.push_str(&format!(
        "$AgentMsi = {}\n",
        ps(p.guest_agent.as_deref().unwrap_or(""))
    ));
    head.push_str(&format!("$StaticIps = @({})\n", statics.join(", ")));
    head.push_str(&format!("$Drives = {}\n", ps_array(&p.drives)));
    BODY.replace("@CONFIG@\n", &head)
}

// PowerShell 2.0 compatible (Windows 7): no ConvertTo-Json, no -in, no Get-Disk; the
// JSON is built by hand and every guest string goes through Esc.
const BODY: &str = r#"# v2k first-boot script, installed by `v2k inject`. Runs once per boot until it
# succeeds or has failed $MaxAttempts times; never reboots the guest.
$ErrorActionPreference = 'Continue'
@CONFIG@
$Base = Join-Path $env:SystemRoot 'v2k'
$DriverDir = Join-Path $env:SystemRoot 'Drivers\VirtIO'
$Log = Join-Path $Base 'firstboot.log'
function Log($m) { Add-Content -Path $Log -Value ((Get-Date -Format 's') + ' ' + $m) }
function Esc($s) { (([string]$s) -replace '["\\]', '') -replace '[\x00-\x1f]', '' }
function DoneFile($step) { Join-Path $Base ('done-' + ($step -replace '[^A-Za-z0-9_.-]', '_')) }
function IsDone($step) { Test-Path (DoneFile $step) }
function MarkDone($step) { Set-Content -Path (DoneFile $step) -Value (Get-Date -Format 's') }

$attemptFile = Join-Path $Base 'attempts'
$attempt = 0
if (Test-Path $attemptFile) { $attempt = [int]((Get-Content $attemptFile | Select-Object -First 1) -replace '[^0-9]', '0') }
$attempt = $attempt + 1
Set-Content -Path $attemptFile -Value $attempt
Log ("attempt $attempt of $MaxAttempts")
$failed = @()

# 1. Drivers: pnputil adds each package to the driver store and installs it on
# present devices. 3010 = done, reboot needed; 259 = nothing to update.
foreach ($inf in $Infs) {
    $step = 'driver-' + $inf
    if (IsDone $step) { continue }
    $out = & pnputil.exe -i -a (Join-Path $DriverDir $inf) 2>&1
    Log ("pnputil $inf -> $LASTEXITCODE " + ($out -join ' '))
    if ($LASTEXITCODE -eq 0 -or $LASTEXITCODE -eq 3010 -or $LASTEXITCODE -eq 259) { MarkDone $step }
    else { $failed += $step }
}

# 2. VMware Tools. 1605 = not installed (any more).
foreach ($code in $ToolsCodes) {
    $step = 'uninstall-' + $code
    if (IsDone $step) { continue }
    $p = Start-Process -FilePath 'msiexec.exe' -ArgumentList ('/x ' + $code + ' /qn /norestart') -Wait -PassThru
    Log ("msiexec /x $code -> " + $p.ExitCode)
    if ($p.ExitCode -eq 0 -or $p.ExitCode -eq 3010 -or $p.ExitCode -eq 1605) { MarkDone $step }
    else { $failed += $step }
}

# 3. The QEMU guest agent, when supplied.
if ($AgentMsi -ne '' -and -not (IsDone 'guest-agent')) {
    $p = Start-Process -FilePath 'msiexec.exe' -ArgumentList ('/i "' + (Join-Path $Base $AgentMsi) + '" /qn /norestart') -Wait -PassThru
    Log ("msiexec /i $AgentMsi -> " + $p.ExitCode)
    if ($p.ExitCode -eq 0 -or $p.ExitCode -eq 3010) { MarkDone 'guest-agent' } else { $failed += 'guest-agent' }
}

# 4. Disks: new controllers make Windows Server see data disks as "offline" (SAN
# policy). Set OnlineAll, then online each disk; errors of disks already online are
# ignored (noerr).
if (-not (IsDone 'disks-online')) {
    $dp = Join-Path $Base 'diskpart.txt'
    Set-Content -Path $dp -Value 'san policy=OnlineAll'
    & diskpart.exe /s $dp | Out-Null
    foreach ($d in (Get-WmiObject Win32_DiskDrive)) {
        Set-Content -Path $dp -Value @(('select disk ' + $d.Index), 'online disk noerr', 'attributes disk clear readonly noerr')
        & diskpart.exe /s $dp | Out-Null
    }
    Log 'disks online'
    MarkDone 'disks-online'
}

# 5. Static IPv4 settings of the source NICs, on the adapter with the same MAC. The
# virtio NIC appears only once NetKVM is installed: wait for it (bounded).
foreach ($s in $StaticIps) {
    $step = 'static-ip-' + $s.Mac
    if (IsDone $step) { continue }
    $cfg = $null
    for ($i = 0; $i -lt 60 -and $cfg -eq $null; $i++) {
        $cfg = Get-WmiObject Win32_NetworkAdapterConfiguration -Filter ("MACAddress='" + $s.Mac + "'") | Select-Object -First 1
        if ($cfg -eq $null) { Start-Sleep -Seconds 2 }
    }
    if ($cfg -eq $null) { Log ("no adapter with MAC " + $s.Mac); $failed += $step; continue }
    $r = $cfg.EnableStatic([string[]]$s.Addresses, [string[]]$s.Masks)
    $ok = ($r.ReturnValue -eq 0 -or $r.ReturnValue -eq 1)
    if ($s.Gateways.Count -gt 0) {
        $metrics = @(); foreach ($g in $s.Gateways) { $metrics += [uint16]1 }
        $r2 = $cfg.SetGateways([string[]]$s.Gateways, [uint16[]]$metrics)
        $ok = $ok -and ($r2.ReturnValue -eq 0 -or $r2.ReturnValue -eq 1)
    }
    if ($s.Dns.Count -gt 0) {
        $r3 = $cfg.SetDNSServerSearchOrder([string[]]$s.Dns)
        $ok = $ok -and ($r3.ReturnValue -eq 0 -or $r3.ReturnValue -eq 1)
    }
    Log ("static IP on " + $s.Mac + " -> " + $ok)
    if ($ok) { MarkDone $step } else { $failed += $step }
}

# 6. The report, one line on COM1 (the validator reads the serial console).
$mounts = @()
$present = @()
foreach ($ld in (Get-WmiObject Win32_LogicalDisk)) { $present += ([string]$ld.DeviceID).ToUpper() }
$allDrives = $true
foreach ($d in $Drives) {
    $m = $present -contains $d.ToUpper()
    if (-not $m) { $allDrives = $false }
    $mounts += ('{"target":"' + (Esc $d) + '","ok":' + ([string]$m).ToLower() + '}')
}
$rw = $true
try { Set-Content -Path (Join-Path $Base 'rw-test') -Value 'x' -ErrorAction Stop } catch { $rw = $false }
$nics = @()
foreach ($a in (Get-WmiObject Win32_NetworkAdapter -Filter 'PhysicalAdapter=True')) {
    if ($a.MACAddress -eq $null) { continue }
    $c = Get-WmiObject Win32_NetworkAdapterConfiguration -Filter ('Index=' + $a.Index)
    $ips = @()
    if ($c -ne $null -and $c.IPAddress -ne $null) {
        for ($k = 0; $k -lt $c.IPAddress.Count; $k++) {
            $ip = [string]$c.IPAddress[$k]
            if ($ip -notmatch '^[0-9.]+$') { continue }
            $bits = 0
            foreach ($o in ([string]$c.IPSubnet[$k]).Split('.')) { $bits += ([Convert]::ToString([int]$o, 2) -replace '0', '').Length }
            $ips += ('"' + (Esc $ip) + '/' + $bits + '"')
        }
    }
    $nics += ('{"name":"' + (Esc $a.NetConnectionID) + '","mac":"' + (Esc ([string]$a.MACAddress).ToLower()) + '","ipv4":[' + ($ips -join ',') + ']}')
}
$failedJson = @(); foreach ($f in $failed) { $failedJson += ('"' + (Esc $f) + '"') }
$ok = ($failed.Count -eq 0) -and $rw -and $allDrives
$gaveUp = (-not $ok) -and ($attempt -ge $MaxAttempts)
$up = [int]((Get-Date) - [Management.ManagementDateTimeConverter]::ToDateTime((Get-WmiObject Win32_OperatingSystem).LastBootUpTime)).TotalSeconds
$line = 'V2K-AGENT {"v":1,"ok":' + ([string]$ok).ToLower() + ',"boot":true,"os":"windows","root-rw":' + ([string]$rw).ToLower() +
    ',"mounts":[' + ($mounts -join ',') + '],"nics":[' + ($nics -join ',') + '],"failed-units":[' + ($failedJson -join ',') +
    '],"attempt":' + $attempt + ',"max-attempts":' + $MaxAttempts + ',"gave-up":' + ([string]$gaveUp).ToLower() + ',"uptime":' + $up + '}'
Log $line
Set-Content -Path (Join-Path $Base 'agent-report.txt') -Value $line
try {
    $port = New-Object System.IO.Ports.SerialPort 'COM1', 115200, 'None', 8, 'One'
    $port.Open(); $port.Write($line + "`r`n"); $port.Close()
} catch { Log ('COM1: ' + $_) }

# Done, or out of attempts: never run again (no reboot loop, no endless retries).
if ($ok -or $gaveUp) {
    & sc.exe config $Service start= disabled | Out-Null
    Log ('disabled ' + $Service + ' (ok=' + $ok + ')')
}
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            infs: vec!["viostor\\viostor.inf".into(), "netkvm\\netkvm.inf".into()],
            msi_uninstall: vec!["{3B410500-1802-488E-9EF1-4B11992E0440}".into()],
            guest_agent: Some("qemu-ga-x86_64.msi".into()),
            static_ips: vec![StaticConfig {
                mac: "00:50:56:aa:bb:cc".into(),
                addresses: vec!["192.0.2.10".into()],
                masks: vec!["255.255.255.0".into()],
                gateways: vec!["192.0.2.1".into()],
                dns: vec![],
            }],
            drives: vec!["C:".into()],
            max_attempts: 3,
        }
    }

    #[test]
    fn script_carries_the_plan_as_literals() {
        let s = script(&plan());
        assert!(s.contains("$MaxAttempts = 3\n"));
        assert!(s.contains("$Infs = @('viostor\\viostor.inf', 'netkvm\\netkvm.inf')"));
        assert!(s.contains("Mac = '00:50:56:AA:BB:CC'"));
        assert!(s.contains("'V2K-AGENT {\"v\":1,"));
        assert!(!s.contains("@CONFIG@"));
        // It never reboots.
        let lower = s.to_ascii_lowercase();
        assert!(!lower.contains("restart-computer") && !lower.contains("shutdown"));
        assert!(lower.contains("/norestart"));
    }

    #[test]
    fn quotes_are_doubled_in_literals() {
        assert_eq!(ps("a'b"), "'a''b'");
    }

    #[test]
    fn service_runs_the_script_automatically() {
        let e = service_edits("ControlSet001");
        let get = |v: &str| e.iter().find(|x| x.value == v).unwrap().data.clone();
        assert_eq!(get("Start"), RegValue::Dword(2));
        assert_eq!(get("Type"), RegValue::Dword(0x10));
        assert!(
            matches!(get("ImagePath"), RegValue::ExpandSz(p) if p.ends_with("v2k\\firstboot.ps1"))
        );
    }
}
