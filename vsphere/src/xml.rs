//! A small, bounded, namespace-aware XML tree for SOAP responses, and escaping for
//! what we put into requests.
//!
//! Responses are untrusted (a hostile or broken server, or a man in the middle when
//! the user chose `--insecure`), so the parser refuses DOCTYPE declarations (no
//! entity expansion, no external reads), and caps depth and element count before
//! they can grow memory without bound; the byte size is capped by the HTTP layer
//! ([`crate::client::MAX_SOAP_RESPONSE_BYTES`]). Names are resolved to namespace URIs
//! with quick-xml's `NsReader`, and so is the *value* of `xsi:type` (a QName): vCenter
//! writes `xsi:type="xsd:string"`, the simulator writes
//! `XMLSchema-instance:type="xsd:string"` with its own prefix declaration, and an
//! unprefixed value such as `VirtualDisk` takes the default namespace (`urn:vim25`).
//! Matching prefix text would get one of them wrong.

use quick_xml::events::Event;
use quick_xml::name::{QName, ResolveResult};
use quick_xml::NsReader;

/// The XML Schema instance namespace, which `type` attributes are resolved against.
pub(crate) const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The vSphere API namespace.
pub(crate) const VIM25_NS: &str = "urn:vim25";
/// The XML Schema namespace (`xsd:string`, `xsd:int` ...).
pub const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";

/// Deepest nesting accepted. vim25 objects nest about 12 levels inside the SOAP
/// envelope (envelope, body, response, returnval, objects, propSet, val, device,
/// backing, port ...); 64 leaves room for any real type and stops stack-eating input.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one response. A page of 100 VMs with 60 devices of 20
/// elements each is 120,000; each element costs about 150 bytes of tree, so this caps
/// the tree near 150 MiB even when the byte cap would allow more tiny elements.
pub const MAX_ELEMENTS: usize = 1_000_000;

/// A resolved name: namespace URI (if any) and local part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualName {
    pub ns: Option<String>,
    pub local: String,
}

impl QualName {
    /// Whether this is `local` in the vim25 namespace.
    pub fn is_vim(&self, local: &str) -> bool {
        self.ns.as_deref() == Some(VIM25_NS) && self.local == local
    }
}

/// One element with its namespace resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Namespace URI of the element's name.
    pub ns: Option<String>,
    /// Local name.
    pub name: String,
    /// The resolved value of an `xsi:type` attribute.
    pub xsi_type: Option<QualName>,
    /// Attributes without a namespace (`type="VirtualMachine"` on a MoRef), unescaped.
    pub attrs: Vec<(String, String)>,
    /// Concatenated character data directly inside this element, unescaped.
    pub text: String,
    pub children: Vec<Element>,
}

/// Why a response could not be read as XML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(pub String);

impl Element {
    /// The first child with this local name (any namespace: SOAP children of one
    /// vim25 element share its namespace, and some servers omit it).
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The value of an unqualified attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The local part of `xsi:type`, when it is a vim25 type (or has no namespace,
    /// as some servers write it).
    pub(crate) fn vim_type(&self) -> Option<&str> {
        match &self.xsi_type {
            Some(q) if q.ns.is_none() || q.ns.as_deref() == Some(VIM25_NS) => Some(&q.local),
            _ => None,
        }
    }

    /// Follows a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }
}

fn ns_of(r: ResolveResult<'_>) -> Result<Option<String>, XmlError> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.0).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(XmlError(format!(
            "undeclared namespace prefix {:?}",
            String::from_utf8_lossy(&p)
        ))),
    }
}

/// Parses a whole document into a tree, within [`MAX_DEPTH`] and [`MAX_ELEMENTS`].
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let mut r = NsReader::from_reader(bytes);
    r.config_mut().expand_empty_elements = true;
    let err = |e: &dyn std::fmt::Display| XmlError(e.to_string());
    let mut stack: Vec<Element> = Vec::new();
    let mut count = 0usize;
    let mut root: Option<Element> = None;
    loop {
        let (ns, ev) = r.read_resolved_event().map_err(|e| err(&e))?;
        match ev {
            Event::Start(s) => {
                if root.is_some() {
                    return Err(XmlError("content after the root element".into()));
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError(format!("more than {MAX_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError(format!("nesting deeper than {MAX_DEPTH}")));
                }
                let mut el = Element {
                    ns: ns_of(ns)?,
                    name: String::from_utf8_lossy(s.local_name().as_ref()).into_owned(),
                    ..Element::default()
                };
                for a in s.attributes() {
                    let a = a.map_err(|e| err(&e))?;
                    if a.key.as_ref().starts_with(b"xmlns") {
                        continue;
                    }
                    let (ans, local) = r.resolve_attribute(a.key);
                    let ans = ns_of(ans)?;
                    let value = a.unescape_value().map_err(|e| err(&e))?.into_owned();
                    match ans.as_deref() {
                        Some(XSI_NS) if local.as_ref() == b"type" => {
                            // The value is a QName: its prefix is resolved like an
                            // element name's (an unprefixed one takes the default
                            // namespace).
                            let (tns, tlocal) = r.resolve_element(QName(value.as_bytes()));
                            el.xsi_type = Some(QualName {
                                ns: ns_of(tns)?,
                                local: String::from_utf8_lossy(tlocal.as_ref()).into_owned(),
                            });
                        }
                        None => el
                            .attrs
                            .push((String::from_utf8_lossy(local.as_ref()).into_owned(), value)),
                        Some(_) => {}
                    }
                }
                stack.push(el);
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| err(&e))?;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(XmlError("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::DocType(_) => {
                return Err(XmlError(
                    "DOCTYPE declarations are refused (entity expansion)".into(),
                ))
            }
            // Never produced: expand_empty_elements turns `<a/>` into Start + End.
            Event::Empty(_) => return Err(XmlError("unexpected empty-element event".into())),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("document ends inside an element".into()));
    }
    root.ok_or_else(|| XmlError("no root element".into()))
}

/// Escapes text for an XML element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline/CR are not allowed in XML
            // 1.0 at all; a name holding one is dropped character by character
            // rather than producing a request the server rejects as a whole.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_xsi_type_by_namespace_whatever_the_prefix() {
        // As the simulator writes it: its own prefix for the XSI namespace.
        let sim = br#"<r xmlns="urn:vim25"><val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" XMLSchema-instance:type="xsd:string">a</val><d XMLSchema-instance:type="VirtualDisk" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"/></r>"#;
        // As vCenter writes it.
        let vc = br#"<r xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><val xsi:type="xsd:string">a</val><d xsi:type="VirtualDisk"/></r>"#;
        for doc in [&sim[..], &vc[..]] {
            let r = parse(doc).unwrap();
            let t = r.child("val").unwrap().xsi_type.clone().unwrap();
            assert_eq!(t.ns.as_deref(), Some(XSD_NS));
            assert_eq!(t.local, "string");
            assert_eq!(r.child("d").unwrap().vim_type(), Some("VirtualDisk"));
        }
    }

    #[test]
    fn a_type_attribute_in_another_namespace_is_not_xsi_type() {
        let doc = br#"<r xmlns:x="urn:other" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><a x:type="Evil">1</a><b xsi:type="Good">2</b></r>"#;
        let r = parse(doc).unwrap();
        assert!(r.child("a").unwrap().xsi_type.is_none());
        assert_eq!(
            r.child("b").unwrap().xsi_type.as_ref().unwrap().local,
            "Good"
        );
    }

    #[test]
    fn refuses_doctype_and_entities() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><r>&b;</r>"#;
        assert!(parse(bomb).unwrap_err().0.contains("DOCTYPE"));
        assert!(parse(b"<r>&undefined;</r>").is_err());
    }

    #[test]
    fn refuses_deep_nesting_before_growing() {
        let mut doc = String::new();
        for _ in 0..MAX_DEPTH + 1 {
            doc.push_str("<a>");
        }
        assert!(parse(doc.as_bytes()).unwrap_err().0.contains("deeper"));
    }

    #[test]
    fn refuses_undeclared_prefixes_and_truncation() {
        assert!(parse(b"<p:r/>").is_err());
        assert!(parse(b"<r><a>").is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b>&\"c'\u{1}d"), "a&lt;b&gt;&amp;&quot;c&apos;d");
        let r = parse(format!("<r a=\"{}\">{}</r>", escape("x\"&<"), escape("<&>")).as_bytes())
            .unwrap();
        assert_eq!(r.attr("a"), Some("x\"&<"));
        assert_eq!(r.text, "<&>");
    }
}
