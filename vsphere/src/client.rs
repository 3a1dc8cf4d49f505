//! The vSphere SOAP (vim25) client: one session with a vCenter or ESXi host.
//!
//! Every call is `POST /sdk` with `SOAPAction: urn:vim25/<apiVersion>` (real vCenter
//! picks the API version from it; the simulator ignores it, so mistakes there would
//! not show in tests). The session is the `vmware_soap_session` cookie, kept here
//! rather than in a cookie store so that it is sent only to this server, reused for
//! datastore downloads, marked sensitive, and never printed. A call that faults with
//! NotAuthenticated (the session expired or was terminated) logs in again once and is
//! repeated; HTTP 503 is retried with exponential backoff. Responses are read up to
//! [`MAX_SOAP_RESPONSE_BYTES`] and parsed by [`crate::xml`] within its limits.
//!
//! [`Client`] is the blocking façade: it owns a current-thread tokio runtime and
//! logs out when dropped. The async core ([`Session`]) is shared with the datastore
//! downloads ([`crate::datastore`]), which run on the same runtime.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{StatusCode, Url};

use crate::error::{Error, FaultKind, Result};
use crate::tls::{self, Thumbprint, TlsMode};
use crate::xml::{self, escape, Element};

/// Largest SOAP response accepted (64 MiB). A page of [`PAGE_OBJECTS`] VMs with
/// every device is a few MiB; a hostile server must not make us buffer gigabytes.
pub(crate) const MAX_SOAP_RESPONSE_BYTES: usize = 64 << 20;
/// Objects asked for per RetrievePropertiesEx page (`maxObjects`).
pub(crate) const PAGE_OBJECTS: u32 = 100;
/// Most objects collected over all pages of one retrieval: far above any real
/// vCenter (the documented maximum is 45,000 VMs), a stop for a server that pages
/// forever.
pub(crate) const MAX_OBJECTS: usize = 200_000;
/// Most pages followed for one retrieval, for a server that returns empty pages
/// with a token forever.
pub(crate) const MAX_PAGES: usize = 10_000;
/// Attempts for a request answered with HTTP 503 (busy), backing off 0.25 s, 0.5 s,
/// 1 s, 2 s, 4 s: vCenter returns 503 while its services restart or when throttling.
pub const MAX_ATTEMPTS_503: u32 = 6;
/// First backoff delay; doubled at each attempt.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(250);
/// The SOAPAction version used for RetrieveServiceContent, before the server's own
/// API version is known: every vCenter and ESXi since 6.0 accepts it.
pub(crate) const BOOTSTRAP_API_VERSION: &str = "6.0";
/// Longest time to establish a TCP+TLS connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence while reading a response (not the whole transfer: disks take
/// hours).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The session cookie vCenter and ESXi set at Login.
pub(crate) const SESSION_COOKIE: &str = "vmware_soap_session";

const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// A password, which never appears in `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Who logs in.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Host name or address (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
}

impl Options {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Options {
            host: host.into(),
            port,
            tls: TlsMode::default(),
        }
    }
}

/// A managed object reference: type and id. Ids are opaque server text (the
/// simulator's datastore ids are file paths) and are escaped wherever they go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MoRef {
    pub kind: String,
    pub value: String,
}

impl MoRef {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Reads `<x type="T">id</x>`.
    pub fn from_element(e: &Element) -> Option<Self> {
        Some(MoRef::new(e.attr("type")?, e.text.trim()))
    }

    /// Writes `<tag type="T">id</tag>`, escaped.
    pub fn to_xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

/// The parts of the ServiceContent v2k uses.
#[derive(Debug, Clone)]
pub struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub session_manager: MoRef,
    pub search_index: Option<MoRef>,
    /// The PerformanceManager (`v2k baseline`).
    pub perf_manager: Option<MoRef>,
    /// `about.apiVersion` (`7.0.3.0`).
    pub api_version: String,
    /// `about.fullName`.
    pub full_name: String,
    /// `VirtualCenter` or `HostAgent` (ESXi).
    pub api_type: String,
}

impl ServiceContent {
    fn parse(ret: &Element) -> Result<Self> {
        let mo = |n: &str| {
            ret.child(n)
                .and_then(MoRef::from_element)
                .ok_or_else(|| Error::protocol("RetrieveServiceContent", format!("no {n}")))
        };
        let about = ret.child("about");
        let about_text = |n: &str| {
            about
                .and_then(|a| a.child_text(n))
                .unwrap_or_default()
                .to_string()
        };
        Ok(ServiceContent {
            root_folder: mo("rootFolder")?,
            property_collector: mo("propertyCollector")?,
            view_manager: mo("viewManager")?,
            session_manager: mo("sessionManager")?,
            search_index: ret.child("searchIndex").and_then(MoRef::from_element),
            perf_manager: ret.child("perfManager").and_then(MoRef::from_element),
            api_version: about_text("apiVersion"),
            full_name: about_text("fullName"),
            api_type: about_text("apiType"),
        })
    }
}

/// One object's properties from the property collector, in the order returned.
#[derive(Debug, Clone)]
pub struct ObjectContent {
    pub obj: MoRef,
    /// `(path, val)` pairs; an unset property is simply absent.
    pub props: Vec<(String, Element)>,
    /// Paths the server could not read, with the fault type (`NoPermission`...).
    pub missing: Vec<(String, String)>,
}

impl ObjectContent {
    pub fn get(&self, path: &str) -> Option<&Element> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }
    pub fn text(&self, path: &str) -> Option<&str> {
        self.get(path).map(|v| v.text.trim())
    }
}

/// A property filter: which properties of which object types to collect.
#[derive(Debug, Clone)]
pub struct PropertySpec {
    pub kind: String,
    pub paths: Vec<String>,
}

/// The async core: HTTP client, session cookie, credentials. Shared by the SOAP
/// calls and the datastore downloads.
pub struct Session {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    sdk: Url,
    creds: Credentials,
    version: Mutex<String>,
    cookie: Mutex<Option<String>>,
    content: Mutex<Option<ServiceContent>>,
    /// The leaf thumbprint the verifier saw (pinned and insecure modes).
    seen: Arc<Mutex<Option<Thumbprint>>>,
    pinned: Option<Thumbprint>,
    host: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie is a bearer credential: say whether there is one, never what.
        f.debug_struct("Session")
            .field("base", &self.base.as_str())
            .field("user", &self.creds.user)
            .field(
                "logged_in",
                &self.cookie.lock().map(|c| c.is_some()).unwrap_or(false),
            )
            .finish()
    }
}

/// The `Set-Cookie` value of the session cookie, as `name=value`.
fn session_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers.get_all(SET_COOKIE).iter().find_map(|h| {
        let s = h.to_str().ok()?;
        let pair = s.split(';').next()?.trim();
        let (name, value) = pair.split_once('=')?;
        (name.trim() == SESSION_COOKIE && !value.is_empty()).then(|| pair.to_string())
    })
}

/// Reads a whole body, refusing it past `limit` bytes before buffering more.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    url: &str,
) -> Result<Vec<u8>> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(Error::protocol(
            url,
            format!(
                "response of {} bytes is over the {limit}-byte limit",
                resp.content_length().unwrap_or(0)
            ),
        ));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::transport(url, "reading the response", e))?
    {
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(Error::protocol(
                url,
                format!("response is over the {limit}-byte limit"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The fault inside a SOAP envelope, if there is one.
/// Public for the fuzz target (`fuzz/fuzz_targets/vsphere_soap.rs`).
pub fn parse_fault(method: &str, env: &Element) -> Option<Error> {
    let fault = env.child("Body")?.child("Fault")?;
    let message = fault
        .child_text("faultstring")
        .unwrap_or("")
        .trim()
        .to_string();
    let detail = fault.child("detail").and_then(|d| d.children.first());
    let type_name = detail
        .map(|d| {
            d.vim_type()
                .map(str::to_string)
                .unwrap_or_else(|| d.name.trim_end_matches("Fault").to_string())
        })
        .unwrap_or_default();
    let kind = match type_name.as_str() {
        "NotAuthenticated" => FaultKind::NotAuthenticated,
        "InvalidLogin" => FaultKind::InvalidLogin,
        "NoPermission" => FaultKind::NoPermission {
            privilege: detail
                .and_then(|d| d.child_text("privilegeId"))
                .map(str::to_string),
        },
        "ManagedObjectNotFound" => FaultKind::ManagedObjectNotFound,
        "" => FaultKind::Other("ServerFault".into()),
        other => FaultKind::Other(other.to_string()),
    };
    Some(Error::Fault {
        method: method.to_string(),
        kind,
        message,
    })
}

fn envelope(body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"{SOAP_ENV}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

/// Splits a RetrievePropertiesEx / ContinueRetrievePropertiesEx response into its
/// objects and the continuation token. Public for the fuzz target.
pub fn parse_retrieve_result(response: &Element) -> Result<(Vec<ObjectContent>, Option<String>)> {
    // No returnval at all means "nothing matched".
    let Some(ret) = response.child("returnval") else {
        return Ok((Vec::new(), None));
    };
    let token = ret
        .child_text("token")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let mut out = Vec::new();
    for o in ret.children_named("objects") {
        let obj = o
            .child("obj")
            .and_then(MoRef::from_element)
            .ok_or_else(|| Error::protocol("RetrievePropertiesEx", "object without obj"))?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = p.child_text("name").unwrap_or_default().trim().to_string();
            if let Some(v) = p.child("val") {
                props.push((name, v.clone()));
            }
        }
        let missing = o
            .children_named("missingSet")
            .map(|m| {
                let path = m.child_text("path").unwrap_or_default().trim().to_string();
                let fault = m
                    .child("fault")
                    .and_then(|f| f.child("fault"))
                    .and_then(|f| f.vim_type().map(str::to_string))
                    .unwrap_or_else(|| "unknown fault".into());
                (path, fault)
            })
            .collect();
        out.push(ObjectContent {
            obj,
            props,
            missing,
        });
    }
    Ok((out, token))
}

/// Collects every page: the first response, then `next(token)` while the server
/// returns a token, within [`MAX_OBJECTS`] and [`MAX_PAGES`]. The simulator never
/// pages (it ignores `maxObjects` and has no ContinueRetrievePropertiesEx), so this is
/// unit-tested on recorded vCenter responses.
pub(crate) async fn collect_pages<F, Fut>(first: Element, mut next: F) -> Result<Vec<ObjectContent>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Element>>,
{
    let (mut all, mut token) = parse_retrieve_result(&first)?;
    let mut pages = 1usize;
    while let Some(t) = token.take() {
        pages += 1;
        if pages > MAX_PAGES {
            return Err(Error::protocol(
                "ContinueRetrievePropertiesEx",
                format!("more than {MAX_PAGES} pages"),
            ));
        }
        let (objs, tok) = parse_retrieve_result(&next(t).await?)?;
        all.extend(objs);
        if all.len() > MAX_OBJECTS {
            return Err(Error::protocol(
                "RetrievePropertiesEx",
                format!("more than {MAX_OBJECTS} objects"),
            ));
        }
        token = tok;
    }
    Ok(all)
}

impl Session {
    /// Builds the HTTP client and reads the ServiceContent (not logged in yet).
    pub async fn connect(opts: &Options, creds: Credentials) -> Result<Session> {
        let (cfg, seen) = tls::client_config(&opts.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .https_only(true)
            // A redirect could carry the session cookie to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("v2k/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Usage(format!("HTTP client set-up: {e}")))?;
        let host_port = if opts.host.contains(':') && !opts.host.starts_with('[') {
            format!("[{}]:{}", opts.host, opts.port)
        } else {
            format!("{}:{}", opts.host, opts.port)
        };
        let base = Url::parse(&format!("https://{host_port}/"))
            .map_err(|e| Error::Usage(format!("{host_port}: not a usable host: {e}")))?;
        if !base.username().is_empty() || base.password().is_some() || base.path() != "/" {
            return Err(Error::Usage(format!(
                "{host_port}: not a plain host[:port]"
            )));
        }
        let sdk = base
            .join("sdk")
            .map_err(|e| Error::Usage(format!("{host_port}: {e}")))?;
        let s = Session {
            http,
            base,
            sdk,
            creds,
            version: Mutex::new(BOOTSTRAP_API_VERSION.to_string()),
            cookie: Mutex::new(None),
            content: Mutex::new(None),
            seen,
            pinned: match &opts.tls {
                TlsMode::Pinned(t) => Some(*t),
                _ => None,
            },
            host: host_port,
        };
        let resp = s
            .call_once(
                "RetrieveServiceContent",
                &MoRef::new("ServiceInstance", "ServiceInstance"),
                "",
            )
            .await?;
        let ret = resp
            .child("returnval")
            .ok_or_else(|| Error::protocol("RetrieveServiceContent", "no returnval"))?;
        let content = ServiceContent::parse(ret)?;
        if !content.api_version.is_empty() {
            // Only digits and dots go into the header.
            if content
                .api_version
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
            {
                *s.version.lock().map_err(poisoned)? = content.api_version.clone();
            }
        }
        *s.content.lock().map_err(poisoned)? = Some(content);
        Ok(s)
    }

    pub fn content(&self) -> Result<ServiceContent> {
        self.content
            .lock()
            .map_err(poisoned)?
            .clone()
            .ok_or_else(|| Error::protocol("session", "not connected"))
    }

    /// The `Cookie` header value for this session, marked sensitive.
    pub(crate) fn cookie_header(&self) -> Result<Option<HeaderValue>> {
        let c = self.cookie.lock().map_err(poisoned)?.clone();
        Ok(match c {
            Some(c) => {
                let mut v = HeaderValue::from_str(&c)
                    .map_err(|_| Error::protocol("Login", "unusable session cookie"))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        })
    }

    /// Turns a transport error into a thumbprint mismatch or an untrusted certificate
    /// when that is what it is.
    pub(crate) fn transport_error(&self, url: &str, e: reqwest::Error) -> Error {
        if let (Some(expected), Ok(seen)) = (self.pinned, self.seen.lock()) {
            if let Some(actual) = *seen {
                if actual != expected {
                    return Error::ThumbprintMismatch {
                        host: self.host.clone(),
                        expected: expected.to_string(),
                        actual: actual.to_string(),
                    };
                }
            }
        }
        if let Some(reason) = untrusted_issuer(&e) {
            return Error::UntrustedCertificate {
                host: self.host.clone(),
                reason,
            };
        }
        Error::transport(url, "request failed", e)
    }

    /// One SOAP call, without re-login; 503 is retried with backoff.
    async fn call_once(&self, method: &str, this: &MoRef, args: &str) -> Result<Element> {
        let body = envelope(&format!(
            "<{method} xmlns=\"urn:vim25\">{}{args}</{method}>",
            this.to_xml("_this")
        ));
        let action = format!("urn:vim25/{}", self.version.lock().map_err(poisoned)?);
        let url = self.sdk.as_str();
        let mut delay = BACKOFF_START;
        for attempt in 1..=MAX_ATTEMPTS_503 {
            let mut req = self
                .http
                .post(self.sdk.clone())
                .header(CONTENT_TYPE, "text/xml; charset=utf-8")
                .header("SOAPAction", action.as_str())
                .body(body.clone());
            if let Some(c) = self.cookie_header()? {
                req = req.header(COOKIE, c);
            }
            let resp = req.send().await.map_err(|e| self.transport_error(url, e))?;
            let status = resp.status();
            if status == StatusCode::SERVICE_UNAVAILABLE && attempt < MAX_ATTEMPTS_503 {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                continue;
            }
            if let Some(c) = session_cookie(resp.headers()) {
                *self.cookie.lock().map_err(poisoned)? = Some(c);
            }
            let bytes = read_limited(resp, MAX_SOAP_RESPONSE_BYTES, url).await?;
            let parsed = xml::parse(&bytes);
            if let Ok(env) = &parsed {
                if let Some(fault) = parse_fault(method, env) {
                    return Err(fault);
                }
            }
            if !status.is_success() {
                return Err(Error::Http {
                    url: url.to_string(),
                    status: status.as_u16(),
                    detail: format!(" from {method}"),
                });
            }
            let env = parsed.map_err(|e| Error::protocol(method, e.to_string()))?;
            let resp_name = format!("{method}Response");
            return env
                .child("Body")
                .and_then(|b| b.child(&resp_name))
                .cloned()
                .ok_or_else(|| Error::protocol(method, format!("no {resp_name} in the body")));
        }
        unreachable!("the last attempt returns")
    }

    /// Logs in with the stored credentials (a new session cookie).
    pub async fn login(&self) -> Result<()> {
        let sm = self.content()?.session_manager;
        let args = format!(
            "<userName>{}</userName><password>{}</password>",
            escape(&self.creds.user),
            escape(self.creds.password.expose())
        );
        // A stale cookie would only confuse the server.
        *self.cookie.lock().map_err(poisoned)? = None;
        self.call_once("Login", &sm, &args).await?;
        if self.cookie.lock().map_err(poisoned)?.is_none() {
            return Err(Error::protocol("Login", "the server set no session cookie"));
        }
        Ok(())
    }

    /// Logs out (best effort: the session may already be gone).
    pub async fn logout(&self) -> Result<()> {
        if self.cookie.lock().map_err(poisoned)?.is_none() {
            return Ok(());
        }
        let sm = self.content()?.session_manager;
        let r = self.call_once("Logout", &sm, "").await;
        *self.cookie.lock().map_err(poisoned)? = None;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.fault() == Some(&FaultKind::NotAuthenticated) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A SOAP call; when the session has expired (NotAuthenticated) it logs in again
    /// once and repeats the call.
    pub async fn call(&self, method: &str, this: &MoRef, args: &str) -> Result<Element> {
        match self.call_once(method, this, args).await {
            Err(e) if e.fault() == Some(&FaultKind::NotAuthenticated) => {
                self.login().await?;
                self.call_once(method, this, args).await
            }
            r => r,
        }
    }

    /// Re-login after the datastore interface refused the cookie (401/403).
    pub(crate) async fn relogin(&self) -> Result<()> {
        self.login().await
    }

    /// RetrievePropertiesEx over `objects` (each `obj` + optional selectSet XML),
    /// following every page.
    pub(crate) async fn retrieve(
        &self,
        specs: &[PropertySpec],
        object_set_xml: &str,
    ) -> Result<Vec<ObjectContent>> {
        let pc = self.content()?.property_collector;
        let mut spec = String::from("<specSet>");
        for p in specs {
            spec.push_str(&format!("<propSet><type>{}</type>", escape(&p.kind)));
            if p.paths.is_empty() {
                spec.push_str("<all>true</all>");
            } else {
                spec.push_str("<all>false</all>");
                for path in &p.paths {
                    spec.push_str(&format!("<pathSet>{}</pathSet>", escape(path)));
                }
            }
            spec.push_str("</propSet>");
        }
        spec.push_str(object_set_xml);
        spec.push_str("</specSet>");
        let args = format!("{spec}<options><maxObjects>{PAGE_OBJECTS}</maxObjects></options>");
        let first = self.call("RetrievePropertiesEx", &pc, &args).await?;
        collect_pages(first, |token| {
            let pc = pc.clone();
            async move {
                self.call(
                    "ContinueRetrievePropertiesEx",
                    &pc,
                    &format!("<token>{}</token>", escape(&token)),
                )
                .await
            }
        })
        .await
    }

    /// Properties of every object of the given types under `container` (recursive),
    /// through a ContainerView that is destroyed afterwards.
    pub async fn retrieve_in_container(
        &self,
        container: &MoRef,
        specs: &[PropertySpec],
    ) -> Result<Vec<ObjectContent>> {
        let vm = self.content()?.view_manager;
        let mut args = container.to_xml("container");
        for s in specs {
            args.push_str(&format!("<type>{}</type>", escape(&s.kind)));
        }
        args.push_str("<recursive>true</recursive>");
        let r = self.call("CreateContainerView", &vm, &args).await?;
        let view = r
            .child("returnval")
            .and_then(MoRef::from_element)
            .ok_or_else(|| Error::protocol("CreateContainerView", "no view returned"))?;
        let object_set = format!(
            "<objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\">\
<type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>",
            view.to_xml("obj")
        );
        let result = self.retrieve(specs, &object_set).await;
        // Views live as long as the session; destroy it whatever happened.
        let _ = self.call("DestroyView", &view, "").await;
        result
    }

    /// Properties of one object.
    pub async fn retrieve_one(&self, obj: &MoRef, spec: &PropertySpec) -> Result<ObjectContent> {
        let object_set = format!(
            "<objectSet>{}<skip>false</skip></objectSet>",
            obj.to_xml("obj")
        );
        let mut r = self
            .retrieve(std::slice::from_ref(spec), &object_set)
            .await?;
        if r.is_empty() {
            return Err(Error::Fault {
                method: "RetrievePropertiesEx".into(),
                kind: FaultKind::ManagedObjectNotFound,
                message: format!("{} {}", obj.kind, obj.value),
            });
        }
        Ok(r.swap_remove(0))
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::protocol("session", "internal lock poisoned")
}

/// The blocking client: a logged-in session on its own current-thread runtime.
/// Dropping it logs out.
pub struct Client {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) session: Arc<Session>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session)
            .finish()
    }
}

impl Client {
    /// Connects and logs in.
    pub fn connect(opts: &Options, creds: Credentials) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io {
                path: "tokio runtime".into(),
                what: "starting".into(),
                source: e,
            })?;
        let session = rt.block_on(async {
            let s = Session::connect(opts, creds).await?;
            s.login().await?;
            Ok::<_, Error>(s)
        })?;
        Ok(Client {
            rt,
            session: Arc::new(session),
        })
    }

    pub fn content(&self) -> Result<ServiceContent> {
        self.session.content()
    }

    /// Runs an async operation of the session on this client's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// A raw SOAP call (`args` is already-escaped XML), with re-login.
    pub fn call(&self, method: &str, this: &MoRef, args: &str) -> Result<Element> {
        self.rt.block_on(self.session.call(method, this, args))
    }

    /// The key of this client's session (`SessionManager.currentSession.key`).
    pub fn session_key(&self) -> Result<String> {
        let sm = self.content()?.session_manager;
        let o = self.rt.block_on(self.session.retrieve_one(
            &sm,
            &PropertySpec {
                kind: "SessionManager".into(),
                paths: vec!["currentSession".into()],
            },
        ))?;
        o.get("currentSession")
            .and_then(|s| s.child_text("key"))
            .map(|k| k.trim().to_string())
            .ok_or_else(|| Error::protocol("currentSession", "no session key"))
    }

    /// Ends other sessions by key (SessionManager.TerminateSession); needs the
    /// Sessions.TerminateSession privilege.
    pub fn terminate_sessions(&self, keys: &[String]) -> Result<()> {
        let sm = self.content()?.session_manager;
        let args: String = keys
            .iter()
            .map(|k| format!("<sessionId>{}</sessionId>", escape(k)))
            .collect();
        self.call("TerminateSession", &sm, &args).map(|_| ())
    }

    /// Looks an object up by inventory path (`DC/vm/folder/name`).
    pub fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>> {
        let si = self
            .content()?
            .search_index
            .ok_or_else(|| Error::protocol("ServiceContent", "no SearchIndex"))?;
        let r = self.call(
            "FindByInventoryPath",
            &si,
            &format!("<inventoryPath>{}</inventoryPath>", escape(path)),
        )?;
        Ok(r.child("returnval").and_then(MoRef::from_element))
    }

    /// Waits for a task to finish; returns its result element, if any.
    pub fn wait_for_task(&self, task: &MoRef, limit: Duration) -> Result<Option<Element>> {
        let start = std::time::Instant::now();
        let spec = PropertySpec {
            kind: "Task".into(),
            paths: vec!["info".into()],
        };
        loop {
            let o = self.rt.block_on(self.session.retrieve_one(task, &spec))?;
            let info = o
                .get("info")
                .ok_or_else(|| Error::protocol("Task", "no info"))?;
            match info.child_text("state").map(str::trim) {
                Some("success") => return Ok(info.child("result").cloned()),
                Some("error") => {
                    let fault = info.child("error");
                    return Err(Error::Fault {
                        method: format!("task {}", task.value),
                        kind: FaultKind::Other(
                            fault
                                .and_then(|f| f.child("fault"))
                                .and_then(|f| f.vim_type())
                                .unwrap_or("TaskFailed")
                                .to_string(),
                        ),
                        message: fault
                            .and_then(|f| f.child_text("localizedMessage"))
                            .unwrap_or("")
                            .to_string(),
                    });
                }
                _ if start.elapsed() > limit => {
                    return Err(Error::protocol(
                        format!("task {}", task.value),
                        format!("not finished after {limit:?}"),
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Logs out now (also done on drop).
    pub fn logout(&self) -> Result<()> {
        self.rt.block_on(self.session.logout())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.session.logout());
    }
}

/// rustls's reason when the certificate chain has no trusted root (only default
/// verification can fail so: pinned and insecure modes use their own verifier). The
/// rustls error sits under reqwest's, hyper's and an `io::Error` whose `source()`
/// skips it, so the cause chain's text is searched rather than its types.
fn untrusted_issuer(e: &reqwest::Error) -> Option<String> {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = src {
        let text = c.to_string();
        if text.contains("UnknownIssuer") {
            return Some(text);
        }
        src = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(objs: &[&str], token: Option<&str>) -> Element {
        let mut s = String::from(
            "<RetrievePropertiesExResponse xmlns=\"urn:vim25\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><returnval>",
        );
        if let Some(t) = token {
            s.push_str(&format!("<token>{t}</token>"));
        }
        for o in objs {
            s.push_str(&format!(
                "<objects><obj type=\"VirtualMachine\">{o}</obj><propSet><name>name</name>\
<val xsi:type=\"xsd:string\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{o}-name</val></propSet></objects>"
            ));
        }
        s.push_str("</returnval></RetrievePropertiesExResponse>");
        xml::parse(s.as_bytes()).unwrap()
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    // The simulator ignores maxObjects and has no ContinueRetrievePropertiesEx, so
    // paging is tested on responses shaped like vCenter's (token in returnval).
    #[test]
    fn follows_continuation_tokens_until_the_last_page() {
        let pages =
            std::cell::RefCell::new(vec![page(&["vm-3"], None), page(&["vm-2"], Some("t2"))]);
        let seen = std::cell::RefCell::new(Vec::new());
        let all = run(collect_pages(page(&["vm-1"], Some("t1")), |t| {
            seen.borrow_mut().push(t);
            let p = pages.borrow_mut().pop().unwrap();
            async move { Ok(p) }
        }))
        .unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|o| o.text("name").unwrap().to_string())
            .collect();
        assert_eq!(names, ["vm-1-name", "vm-2-name", "vm-3-name"]);
        assert_eq!(*seen.borrow(), ["t1", "t2"]);
    }

    #[test]
    fn stops_a_server_that_pages_forever() {
        let calls = std::cell::Cell::new(0usize);
        let e = run(collect_pages(page(&[], Some("t")), |_| {
            calls.set(calls.get() + 1);
            async { Ok(page(&[], Some("t"))) }
        }))
        .unwrap_err();
        assert!(e.to_string().contains("pages"), "{e}");
        assert_eq!(calls.get(), MAX_PAGES - 1);
    }

    #[test]
    fn an_empty_result_has_no_returnval() {
        let r = xml::parse(b"<RetrievePropertiesExResponse xmlns=\"urn:vim25\"/>").unwrap();
        let (o, t) = parse_retrieve_result(&r).unwrap();
        assert!(o.is_empty() && t.is_none());
    }

    #[test]
    fn reads_missing_properties_with_their_fault() {
        let r = xml::parse(br#"<R xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><returnval><objects><obj type="VirtualMachine">vm-1</obj><missingSet><path>config</path><fault><fault xsi:type="NoPermission"><privilegeId>System.Read</privilegeId></fault></fault></missingSet></objects></returnval></R>"#).unwrap();
        let (o, _) = parse_retrieve_result(&r).unwrap();
        assert_eq!(
            o[0].missing,
            [("config".to_string(), "NoPermission".to_string())]
        );
    }

    #[test]
    fn turns_faults_into_typed_errors() {
        let f = |detail: &str| {
            let doc = format!(
                "<soapenv:Envelope xmlns:soapenv=\"{SOAP_ENV}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>msg</faultstring><detail>{detail}</detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            );
            parse_fault("M", &xml::parse(doc.as_bytes()).unwrap()).unwrap()
        };
        // The simulator's shape: element name ends in Fault, xsi:type names the type.
        assert_eq!(
            f(r#"<InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault>"#).fault(),
            Some(&FaultKind::InvalidLogin)
        );
        // Without xsi:type, the element name says it.
        assert_eq!(
            f(r#"<NotAuthenticatedFault xmlns="urn:vim25"/>"#).fault(),
            Some(&FaultKind::NotAuthenticated)
        );
        assert_eq!(
            f(r#"<NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><privilegeId>Datastore.Browse</privilegeId></NoPermissionFault>"#).fault(),
            Some(&FaultKind::NoPermission { privilege: Some("Datastore.Browse".into()) })
        );
        assert_eq!(
            f(r#"<ManagedObjectNotFoundFault xmlns="urn:vim25" xsi:type="ManagedObjectNotFound"/>"#).fault(),
            Some(&FaultKind::ManagedObjectNotFound)
        );
        let other = f(r#"<X xmlns="urn:vim25" xsi:type="InvalidArgument"/>"#);
        assert_eq!(
            other.fault(),
            Some(&FaultKind::Other("InvalidArgument".into()))
        );
        assert!(other.to_string().contains("msg"));
    }

    #[test]
    fn escapes_managed_object_ids() {
        // The simulator's datastore ids are temporary paths; any id could hold markup.
        let m = MoRef::new("Datastore", "/tmp/a&b<c>@folder-5");
        let x = m.to_xml("obj");
        assert_eq!(
            x,
            "<obj type=\"Datastore\">/tmp/a&amp;b&lt;c&gt;@folder-5</obj>"
        );
        assert_eq!(
            MoRef::from_element(&xml::parse(x.as_bytes()).unwrap()),
            Some(m)
        );
    }

    #[test]
    fn secrets_and_cookies_stay_out_of_debug_output() {
        let c = Credentials {
            user: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let mut h = reqwest::header::HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("other=1; Path=/"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("vmware_soap_session=\"abc\"; Path=/; HttpOnly; Secure;"),
        );
        assert_eq!(session_cookie(&h).unwrap(), "vmware_soap_session=\"abc\"");
    }
}
