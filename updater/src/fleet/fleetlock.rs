//! A client of the FleetLock protocol (Zincati's reboot-coordination protocol, served by
//! Airlock, poseidon/fleetlock and others): `POST BASE/v1/pre-reboot` takes the box's reboot
//! slot, `POST BASE/v1/steady-state` gives it back.
//!
//! Every request carries the header `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":"NODE","group":"GROUP"}}`. Any 2xx answer is success; any other
//! answer is a refusal, whose JSON body `{"kind":…,"value":…}` (when there is one, read up to
//! [`MAX_ERROR_BODY`] bytes) says why. Redirects are never followed (the header exists so that a
//! redirect cannot turn a lock request into something else).
use super::FleetError;
use serde::Serialize;
use std::time::Duration;

/// Most bytes of an answer's body read.
pub const MAX_ERROR_BODY: u64 = 4096;
/// Longest node id or group sent.
pub const MAX_PARAM_LEN: usize = 256;

/// The answer to a lock or unlock request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum Answer {
    /// A 2xx status.
    Granted {
        /// The status.
        status: u16,
    },
    /// Any other status.
    Refused {
        /// The status.
        status: u16,
        /// The error's `kind`, when the body was a FleetLock error.
        kind: Option<String>,
        /// The error's `value` (human text), or the start of the body.
        value: String,
    },
}

/// A FleetLock client for one node of one group.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    base: String,
    id: String,
    group: String,
    agent: ureq::Agent,
}

/// Checks a group name: non-empty, `[a-zA-Z0-9.-]`, at most [`MAX_PARAM_LEN`] bytes.
pub fn check_group(group: &str) -> Result<(), FleetError> {
    if group.is_empty()
        || group.len() > MAX_PARAM_LEN
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(FleetError::BadGroup {
            group: group.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// The request body for `id` in `group`.
pub fn request_body(id: &str, group: &str) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        r#"{{"client_params":{{"id":{},"group":{}}}}}"#,
        q(id),
        q(group)
    )
}

impl FleetLockClient {
    /// A client of the server at `base` (`https://host/` — the endpoints are appended), each
    /// request bounded by `timeout`.
    pub fn new(
        base: &str,
        id: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<FleetLockClient, FleetError> {
        check_group(group)?;
        if id.is_empty() || id.len() > MAX_PARAM_LEN {
            return Err(FleetError::BadNodeId {
                id: id.chars().take(64).collect(),
            });
        }
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(FleetError::BadUrl {
                url: base.to_owned(),
            });
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(15)))
            .timeout(timeout)
            .redirects(0)
            .build();
        Ok(FleetLockClient {
            base: base.trim_end_matches('/').to_owned(),
            id: id.to_owned(),
            group: group.to_owned(),
            agent,
        })
    }

    /// `POST /v1/pre-reboot`: take (or keep) this node's reboot slot.
    pub fn pre_reboot(&self) -> Result<Answer, FleetError> {
        self.post("/v1/pre-reboot")
    }

    /// `POST /v1/steady-state`: give this node's slot back (fine when none is held).
    pub fn steady_state(&self) -> Result<Answer, FleetError> {
        self.post("/v1/steady-state")
    }

    fn post(&self, endpoint: &str) -> Result<Answer, FleetError> {
        let url = format!("{}{endpoint}", self.base);
        let resp = match self
            .agent
            .post(&url)
            .set("fleet-lock-protocol", "true")
            .set("Content-Type", "application/json")
            .send_string(&request_body(&self.id, &self.group))
        {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => {
                return Err(FleetError::Unreachable {
                    url,
                    reason: e.to_string(),
                })
            }
        };
        let status = resp.status();
        let mut body = Vec::new();
        // The body only explains a refusal; a short read is no reason to fail.
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_reader(), MAX_ERROR_BODY),
            &mut body,
        );
        if (200..300).contains(&status) {
            return Ok(Answer::Granted { status });
        }
        Ok(refusal(status, &body))
    }
}

/// The refusal a non-2xx answer with `body` stands for.
pub fn refusal(status: u16, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    struct Error {
        kind: String,
        value: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(e) => Answer::Refused {
            status,
            kind: Some(e.kind.chars().take(MAX_PARAM_LEN).collect()),
            value: e.value.chars().take(MAX_ERROR_BODY as usize).collect(),
        },
        Err(_) => Answer::Refused {
            status,
            kind: None,
            value: String::from_utf8_lossy(body)
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_client_params_with_id_and_group() {
        assert_eq!(
            request_body("c0ffee", "workers"),
            r#"{"client_params":{"id":"c0ffee","group":"workers"}}"#
        );
    }

    #[test]
    fn groups_are_checked_against_the_protocol_pattern() {
        for good in ["default", "a.b-C9"] {
            assert!(check_group(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "a_b", &"x".repeat(257)] {
            assert!(
                matches!(check_group(bad), Err(FleetError::BadGroup { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_fleetlock_error_body_gives_kind_and_value() {
        assert_eq!(
            refusal(
                409,
                br#"{"kind":"failed_lock_semaphore_full","value":"all 2 slots taken"}"#
            ),
            Answer::Refused {
                status: 409,
                kind: Some("failed_lock_semaphore_full".into()),
                value: "all 2 slots taken".into()
            }
        );
        assert_eq!(
            refusal(502, b"<html>bad gateway\n<p>"),
            Answer::Refused {
                status: 502,
                kind: None,
                value: "<html>bad gateway".into()
            }
        );
    }

    #[test]
    fn a_url_that_is_not_http_is_refused() {
        let e = FleetLockClient::new("ftp://x/", "id", "default", Duration::from_secs(1));
        assert!(matches!(e, Err(FleetError::BadUrl { .. })));
    }
}
