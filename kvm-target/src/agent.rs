//! What the first-boot agent (installed in the guest by the injector) and the
//! validator (which boots the guest and reads the agent's report) agree on: the
//! serial-console line prefix and the fw_cfg entry that asks the agent to power off.

/// Every report line the agent writes to the serial console starts with this.
pub const LINE_PREFIX: &str = "V2K-AGENT";
/// fw_cfg entry: when present, the agent powers the guest off this many seconds after
/// reporting (validation boots); production boots never have it.
pub const POWEROFF_FW_CFG: &str = "opt/org.v2k/poweroff-after";
