//! The migration report: `report.json` (versioned schema, docs/report.md) and a
//! self-contained `report.html` (inline CSS, the console screenshot embedded as a
//! data URI, no external assets) that an application owner can read.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Validation;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub schema_version: u32,
    pub v2k_version: String,
    pub vm: String,
    /// The VMX, OVF or OVA the VM came from.
    pub source: String,
    /// `validated`, `validation-failed`, or `not-validated`.
    pub result: String,
    pub source_hardware: Hardware,
    pub target_hardware: Hardware,
    /// Pre-flight concerns from the inventory (id, severity, subject, message).
    #[serde(default)]
    pub concerns: Vec<serde_json::Value>,
    /// One converter manifest per disk (docs/convert.md).
    #[serde(default)]
    pub disks: Vec<serde_json::Value>,
    /// The injector's conversion log (docs/inject.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_changes: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Hardware {
    pub firmware: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<String>,
    pub nics: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Stage {
    pub name: String,
    /// `done`, `reused` (finished by an earlier run and re-verified), `failed`, `skipped`.
    pub status: String,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => o.push(c),
        }
    }
    o
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, for the embedded screenshot.
pub fn base64(data: &[u8]) -> String {
    let mut o = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        o.push(B64[(n >> 18) as usize & 63] as char);
        o.push(B64[(n >> 12) as usize & 63] as char);
        o.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        o.push(if c.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    o
}

fn str_of(v: &serde_json::Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return String::new(),
        }
    }
    match cur {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

const CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}table{border-collapse:collapse;margin:1em 0;width:100%}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:90%}\
th{background:#f3f3f3}.pass{color:#fff;background:#2e7d32}.fail{color:#fff;background:#c62828}\
.badge{display:inline-block;padding:.2em .8em;border-radius:1em;font-weight:bold}\
.critical{color:#c62828;font-weight:bold}.warning{color:#b26a00}code{font-size:85%}\
img{max-width:100%;border:1px solid #999}";

/// Renders the report as one self-contained HTML page.
pub fn render_html(r: &Report) -> String {
    let mut h = String::new();
    let ok = r.result == "validated";
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>v2k report: {vm}</title><style>{CSS}</style></head><body>\
         <h1>{vm}</h1><p class=\"sub\">VMware → KVM migration report · v2k {ver} · source <code>{src}</code></p>\
         <p><span class=\"badge {cls}\">{result}</span></p>",
        vm = esc(&r.vm),
        ver = esc(&r.v2k_version),
        src = esc(&r.source),
        cls = if ok { "pass" } else { "fail" },
        result = esc(&r.result),
    );
    // Hardware side by side.
    h.push_str(
        "<h2>Hardware</h2><table><tr><th></th><th>VMware (source)</th><th>KVM (target)</th></tr>",
    );
    let (s, t) = (&r.source_hardware, &r.target_hardware);
    let rows = [
        ("Firmware", s.firmware.clone(), t.firmware.clone()),
        ("vCPUs", s.cpus.to_string(), t.cpus.to_string()),
        (
            "Memory",
            format!("{} MiB", s.memory_mib),
            format!("{} MiB", t.memory_mib),
        ),
        ("Disks", s.disks.join("\n"), t.disks.join("\n")),
        ("NICs", s.nics.join("\n"), t.nics.join("\n")),
    ];
    for (k, a, b) in rows {
        let _ = write!(
            h,
            "<tr><th>{k}</th><td>{}</td><td>{}</td></tr>",
            esc(&a).replace('\n', "<br>"),
            esc(&b).replace('\n', "<br>")
        );
    }
    h.push_str("</table>");
    // Validation.
    h.push_str("<h2>Validation</h2>");
    match &r.validation {
        None => h.push_str("<p>The migrated VM was not booted (validation skipped).</p>"),
        Some(v) => {
            let _ = write!(
                h,
                "<p>Booted with {:?} ({}); agent report after {}.</p><table><tr><th>Check</th><th>Result</th><th>Reason</th></tr>",
                v.backend,
                v.accel.as_str(),
                v.evidence.boot_seconds.map_or("—".to_string(), |s| format!("{s:.1} s")),
            );
            for c in &v.checks {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><span class=\"badge {}\">{}</span></td><td>{}</td></tr>",
                    esc(&c.id),
                    if c.passed { "pass" } else { "fail" },
                    if c.passed { "pass" } else { "fail" },
                    esc(&c.reason)
                );
            }
            h.push_str("</table>");
            if let Some(shot) = &v.evidence.screenshot {
                if let Ok(png) = std::fs::read(shot) {
                    let _ = write!(
                        h,
                        "<h3>Console after boot</h3><img alt=\"console screenshot\" src=\"data:image/png;base64,{}\">",
                        base64(&png)
                    );
                }
            }
        }
    }
    // Concerns.
    h.push_str("<h2>Pre-flight concerns</h2>");
    if r.concerns.is_empty() {
        h.push_str("<p>None.</p>");
    } else {
        h.push_str(
            "<table><tr><th>Severity</th><th>Id</th><th>Subject</th><th>Explanation</th></tr>",
        );
        for c in &r.concerns {
            let sev = str_of(c, &["severity"]);
            let _ = write!(
                h,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&sev),
                esc(&sev),
                esc(&str_of(c, &["id"])),
                esc(&str_of(c, &["subject"])),
                esc(&str_of(c, &["message"]))
            );
        }
        h.push_str("</table>");
    }
    // Disks.
    h.push_str("<h2>Disks</h2><table><tr><th>Source</th><th>Output</th><th>Virtual size</th><th>Data</th><th>Copy</th><th>Content hash (v2k-blkhash-sha256)</th><th>Verified</th></tr>");
    for d in &r.disks {
        let _ = write!(
            h,
            "<tr><td><code>{}</code><br>{}</td><td><code>{}</code></td><td>{} B</td><td>{} B</td><td>{:.1} s</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&str_of(d, &["source", "path"])),
            esc(&str_of(d, &["source", "create-type"])),
            esc(&str_of(d, &["output", "path"])),
            esc(&str_of(d, &["source", "virtual-size"])),
            esc(&str_of(d, &["output", "data-bytes"])),
            d.pointer("/timing/copy-seconds").and_then(|v| v.as_f64()).unwrap_or_default(),
            esc(&str_of(d, &["hash", "source"])),
            esc(&str_of(d, &["hash", "verified"])),
        );
    }
    h.push_str("</table>");
    // Guest changes.
    h.push_str("<h2>Changes made to the guest</h2>");
    match r
        .guest_changes
        .as_ref()
        .and_then(|g| g.get("changes"))
        .and_then(|c| c.as_array())
    {
        Some(changes) if !changes.is_empty() => {
            h.push_str("<table><tr><th>What</th><th>File</th><th>Before</th><th>After</th></tr>");
            for c in changes {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    esc(&str_of(c, &["action"]).to_string().replace("\"", "")),
                    esc(&str_of(c, &["file"])),
                    esc(&str_of(c, &["before"])).replace('\n', "<br>"),
                    esc(&str_of(c, &["after"])).replace('\n', "<br>"),
                );
            }
            h.push_str("</table>");
        }
        _ => h.push_str("<p>None recorded.</p>"),
    }
    // Stages.
    h.push_str("<h2>Stages</h2><table><tr><th>Stage</th><th>Status</th><th>Duration</th><th>Detail</th></tr>");
    for s in &r.stages {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.status),
            s.seconds,
            esc(s.detail.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

/// Writes `report.json` and `report.html` into `dir`.
pub fn write(r: &Report, dir: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.html"), render_html(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn html_escapes_untrusted_names() {
        let r = Report {
            schema_version: SCHEMA_VERSION,
            v2k_version: "0".into(),
            vm: "<script>alert(1)</script>".into(),
            source: "x.vmx".into(),
            result: "not-validated".into(),
            source_hardware: Hardware::default(),
            target_hardware: Hardware::default(),
            concerns: vec![],
            disks: vec![],
            guest_changes: None,
            validation: None,
            stages: vec![],
        };
        let h = render_html(&r);
        assert!(!h.contains("<script>"));
        assert!(h.contains("&lt;script&gt;"));
    }
}
