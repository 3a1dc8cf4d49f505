//! VMware metadata (VMX, OVF, OVA) read into one VM model, with pre-flight concerns.
