//! The user and group libvirt runs QEMU as (its DAC security model's base label), read
//! from `virsh capabilities`. A live import's NBD socket must be handed to that user:
//! libvirt's dynamic ownership relabels the overlay file, but not a backing NBD socket
//! (issue 19), and the socket must never be opened to everyone.

/// A numeric `uid:gid`, as libvirt's DAC base label states it (`+64055:+64055`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DacLabel {
    pub uid: u32,
    pub gid: u32,
}

/// The DAC base label for domains of `domain_type` (`kvm` or `qemu`) in the
/// capabilities XML, or `None` when libvirt states none (DAC off, or names instead of
/// numbers, which v2k does not guess at).
pub fn dac_label(capabilities: &str, domain_type: &str) -> Option<DacLabel> {
    // Each <secmodel> block holds one <model>; the DAC one carries the base labels.
    capabilities.split("<secmodel>").skip(1).find_map(|block| {
        let block = block.split("</secmodel>").next()?;
        if !block.contains("<model>dac</model>") {
            return None;
        }
        block.split("<baselabel").skip(1).find_map(|b| {
            let (attrs, rest) = b.split_once('>')?;
            let ty = attrs.trim();
            let want1 = format!("type='{domain_type}'");
            let want2 = format!("type=\"{domain_type}\"");
            if ty != want1 && ty != want2 {
                return None;
            }
            let label = rest.split("</baselabel>").next()?.trim();
            let (u, g) = label.split_once(':')?;
            Some(DacLabel {
                uid: u.strip_prefix('+')?.parse().ok()?,
                gid: g.strip_prefix('+')?.parse().ok()?,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: &str = "<capabilities><host><secmodel>\n<model>none</model>\n<doi>0</doi>\n\
        </secmodel>\n<secmodel>\n<model>dac</model>\n<doi>0</doi>\n\
        <baselabel type='kvm'>+64055:+64055</baselabel>\n\
        <baselabel type='qemu'>+64055:+994</baselabel>\n</secmodel></host></capabilities>";

    #[test]
    fn reads_the_dac_base_label_per_domain_type() {
        assert_eq!(
            dac_label(CAPS, "kvm"),
            Some(DacLabel {
                uid: 64055,
                gid: 64055
            })
        );
        assert_eq!(
            dac_label(CAPS, "qemu"),
            Some(DacLabel {
                uid: 64055,
                gid: 994
            })
        );
        assert_eq!(dac_label(CAPS, "xen"), None);
    }

    #[test]
    fn no_dac_model_or_a_named_label_gives_none() {
        let none = "<secmodel><model>none</model><doi>0</doi></secmodel>";
        assert_eq!(dac_label(none, "kvm"), None);
        let named =
            "<secmodel><model>dac</model><baselabel type='kvm'>qemu:qemu</baselabel></secmodel>";
        assert_eq!(dac_label(named, "kvm"), None);
        // A label in a non-DAC block (selinux) is not taken for the DAC one.
        let selinux = "<secmodel><model>selinux</model>\
            <baselabel type='kvm'>+1:+1</baselabel></secmodel>";
        assert_eq!(dac_label(selinux, "kvm"), None);
    }
}
