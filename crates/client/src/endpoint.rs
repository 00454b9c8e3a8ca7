//! From the URL a user gives to the WebSocket and REST URLs (PROTOCOL.md §1.3).

use url::Url;

use crate::error::{Error, Result};
use crate::options::Vsn;

/// The two URLs a client talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ws(s)://host/realtime/v1/websocket?apikey=..&vsn=..`
    pub websocket: Url,
    /// `http(s)://host/realtime/v1/api` (no trailing slash).
    pub rest: Url,
}

impl Endpoint {
    /// Accepts what the official clients accept:
    ///
    /// * a project URL, `https://abc.supabase.co` (→ `/realtime/v1/websocket`);
    /// * a realtime endpoint, `https://abc.supabase.co/realtime/v1` or `ws://host:4000/socket`
    ///   (→ `<endpoint>/websocket`);
    /// * a full WebSocket URL ending in `/websocket`.
    ///
    /// `http` becomes `ws` and `https` becomes `wss`. `apikey` and `vsn` are added to the
    /// query (existing query parameters are kept).
    pub fn parse(url: &str, apikey: &str, vsn: Vsn, params: &[(String, String)]) -> Result<Self> {
        let mut u = Url::parse(url.trim())
            .map_err(|e| Error::invalid(format!("invalid realtime URL {url:?}")).with_source(e))?;
        let (ws_scheme, http_scheme) = match u.scheme().to_ascii_lowercase().as_str() {
            "http" | "ws" => ("ws", "http"),
            "https" | "wss" => ("wss", "https"),
            other => {
                return Err(Error::invalid(format!(
                    "unsupported URL scheme {other:?}: use http(s) or ws(s)"
                )))
            }
        };
        let path = u.path().trim_end_matches('/').to_owned();
        let ws_path = if path.ends_with("/websocket") {
            path.clone()
        } else if path.is_empty() {
            "/realtime/v1/websocket".to_owned()
        } else {
            format!("{path}/websocket")
        };
        let base = ws_path.trim_end_matches("/websocket");
        let rest_path = match base.strip_suffix("/socket") {
            Some(prefix) => format!("{prefix}/api"),
            None => format!("{base}/api"),
        };
        let existing: Vec<(String, String)> = u
            .query_pairs()
            .filter(|(k, _)| k != "apikey" && k != "vsn")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();

        let mut rest = u.clone();
        set_scheme(&mut rest, http_scheme)?;
        rest.set_path(&rest_path);
        rest.set_query(None);
        rest.set_fragment(None);

        set_scheme(&mut u, ws_scheme)?;
        u.set_path(&ws_path);
        u.set_fragment(None);
        u.set_query(None);
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in existing.iter().chain(params.iter()) {
                if k != "apikey" && k != "vsn" {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("apikey", apikey);
            q.append_pair("vsn", vsn.as_str());
        }
        Ok(Endpoint { websocket: u, rest })
    }
}

fn set_scheme(u: &mut Url, scheme: &str) -> Result<()> {
    // `Url::set_scheme` refuses switching between "special" schemes only in odd cases
    // (e.g. file); http/https/ws/wss are all special, so this succeeds for our inputs.
    u.set_scheme(scheme)
        .map_err(|()| Error::invalid(format!("cannot use scheme {scheme} for {u}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(url: &str) -> String {
        Endpoint::parse(url, "KEY", Vsn::V2, &[])
            .unwrap()
            .websocket
            .to_string()
    }

    #[test]
    fn project_url() {
        assert_eq!(
            ws("https://abc.supabase.co"),
            "wss://abc.supabase.co/realtime/v1/websocket?apikey=KEY&vsn=2.0.0"
        );
        let e = Endpoint::parse("http://127.0.0.1:4000/", "K", Vsn::V1, &[]).unwrap();
        assert_eq!(
            e.websocket.as_str(),
            "ws://127.0.0.1:4000/realtime/v1/websocket?apikey=K&vsn=1.0.0"
        );
        assert_eq!(e.rest.as_str(), "http://127.0.0.1:4000/realtime/v1/api");
    }

    #[test]
    fn realtime_endpoint_and_full_urls() {
        assert_eq!(
            ws("https://abc.supabase.co/realtime/v1"),
            "wss://abc.supabase.co/realtime/v1/websocket?apikey=KEY&vsn=2.0.0"
        );
        assert_eq!(
            ws("wss://abc.supabase.co/realtime/v1/websocket?apikey=OLD&log_level=info"),
            "wss://abc.supabase.co/realtime/v1/websocket?log_level=info&apikey=KEY&vsn=2.0.0"
        );
        let e = Endpoint::parse("ws://localhost:4000/socket", "K", Vsn::V2, &[]).unwrap();
        assert_eq!(
            e.websocket.as_str(),
            "ws://localhost:4000/socket/websocket?apikey=K&vsn=2.0.0"
        );
        assert_eq!(e.rest.as_str(), "http://localhost:4000/api");
    }

    #[test]
    fn params_are_encoded_and_bad_urls_refused() {
        let e = Endpoint::parse(
            "HTTPS://x.co",
            "a b",
            Vsn::V2,
            &[("log_level".into(), "info".into())],
        )
        .unwrap();
        assert_eq!(
            e.websocket.as_str(),
            "wss://x.co/realtime/v1/websocket?log_level=info&apikey=a+b&vsn=2.0.0"
        );
        assert_eq!(
            Endpoint::parse("ftp://x", "k", Vsn::V2, &[])
                .unwrap_err()
                .kind(),
            crate::ErrorKind::InvalidInput
        );
        assert!(Endpoint::parse("not a url", "k", Vsn::V2, &[]).is_err());
    }
}
