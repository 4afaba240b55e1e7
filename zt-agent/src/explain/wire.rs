//! The control socket's explain exchange, and its client: one JSON line each way.
//!
//! ```text
//!  client ─▶ {"explain":{"from":"x/a","to":null,"port":80,"protocol":"TCP"}}\n
//!  agent  ─▶ {"ok":{"results":[…],"results_ipv6":[…]}}\n   or   {"error":"…"}\n
//! ```
//! The socket is the agent's (`runtime::control`): root only (mode 0600, peer uid 0).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{Explanation, Query, Target};
use crate::{
    error::{Error, Result},
    lab::plan::Protocol,
};

/// The filters of an explain request, as the command line wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    pub from: Option<String>,
    pub to: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
}

impl Filters {
    pub fn query(&self) -> Result<Query> {
        let protocol = self
            .protocol
            .as_deref()
            .map(|p| {
                Protocol::parse(&p.to_ascii_uppercase()).ok_or_else(|| {
                    Error::Other(format!("--protocol {p:?}: expected TCP, UDP or SCTP"))
                })
            })
            .transpose()?;
        Ok(Query {
            from: self.from.as_deref().map(Target::parse).transpose()?,
            to: self.to.as_deref().map(Target::parse).transpose()?,
            port: self.port,
            protocol,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Explain(Filters),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Explanation),
    Error(String),
}

/// How long the client waits for the agent.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the agent behind `socket` to explain `filters`.
pub fn ask(socket: &Path, filters: &Filters) -> Result<Explanation> {
    let io = |source| Error::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Error::Other(format!(
            "{}: {e} (is `zt-agent run` running here, and are you root? offline: --manifests DIR)",
            socket.display()
        ))
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line =
        serde_json::to_string(&Request::Explain(filters.clone())).expect("a request serializes");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(Error::Other(format!(
            "{}: the agent closed the connection without an answer (not root?)",
            socket.display()
        )));
    }
    match serde_json::from_str(&answer) {
        Ok(Reply::Ok(explanation)) => Ok(explanation),
        Ok(Reply::Error(message)) => Err(Error::Other(format!("the agent: {message}"))),
        Err(e) => Err(Error::Other(format!(
            "{}: not an explain answer ({e}): {answer}",
            socket.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_one_line() {
        let request = Request::Explain(Filters {
            from: Some("x/a".into()),
            port: Some(80),
            ..Filters::default()
        });
        let text = serde_json::to_string(&request).unwrap();
        assert!(!text.contains('\n'));
        assert!(text.starts_with(r#"{"explain":{"from":"x/a""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let reply = Reply::Error("no pod x/zz".into());
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(text, r#"{"error":"no pod x/zz"}"#);
    }

    #[test]
    fn filters_parse_into_a_query() {
        let filters = Filters {
            from: Some("10.0.0.1".into()),
            to: Some("x/b".into()),
            port: Some(53),
            protocol: Some("udp".into()),
        };
        let query = filters.query().unwrap();
        assert_eq!(query.protocol, Some(Protocol::Udp));
        assert!(matches!(query.from, Some(Target::Address(_))));
        let bad = Filters {
            protocol: Some("ICMP".into()),
            ..Filters::default()
        };
        assert!(bad.query().is_err());
    }
}
