//! `v2k inspect PATH...`: VMX, OVF, OVA (or directories of them) into the VM model.
//! Being written under issue 3; see inventory/.

#[derive(clap::Args)]
pub struct Args {}

pub fn exec(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("inspect is not built yet")
}
