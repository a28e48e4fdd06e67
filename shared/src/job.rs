//! The job message the api publishes and the worker consumes: versioned JSON (docs/ARCHITECTURE.md).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::EmailAddress;

/// Version of the message shape; an incompatible shape gets a new number.
pub const VERSION: u32 = 1;

/// A unit of work for the worker, tagged by `type`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    /// Send a password reset email to the account with this address, if there is one.
    PasswordReset(PasswordResetJob),
}

/// The password reset job.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PasswordResetJob {
    /// Unique per request; the worker's idempotency key and the AMQP `message_id`.
    pub job_id: Uuid,
    /// The address as the client typed it (the email goes to the address stored on the account).
    pub email: EmailAddress,
    /// The request's correlation id, carried onto every log line of the job.
    pub correlation_id: Uuid,
    /// When the api accepted the request.
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
}

/// Why a message body is not a job this version understands.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the shape of any job.
    #[error("malformed job message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A shape from a newer (or unknown) version.
    #[error("unsupported job message version {0}")]
    UnsupportedVersion(u32),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<J> {
    v: u32,
    #[serde(flatten)]
    job: J,
}

#[derive(serde::Deserialize)]
struct VersionOnly {
    v: u32,
}

impl Job {
    /// The job's id.
    pub fn job_id(&self) -> Uuid {
        match self {
            Job::PasswordReset(job) => job.job_id,
        }
    }

    /// The correlation id of the request that made the job.
    pub fn correlation_id(&self) -> Uuid {
        match self {
            Job::PasswordReset(job) => job.correlation_id,
        }
    }

    /// The message body: `{"v":1,"type":"password_reset",...}`. An error, never an empty body,
    /// if the job cannot be written.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&Envelope {
            v: VERSION,
            job: self,
        })
    }

    /// Reads a message body; unknown fields are ignored, so new fields can be added compatibly.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let VersionOnly { v } = serde_json::from_slice(body)?;
        if v != VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let envelope: Envelope<Job> = serde_json::from_slice(body)?;
        Ok(envelope.job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Job {
        Job::PasswordReset(PasswordResetJob {
            job_id: Uuid::nil(),
            email: EmailAddress::parse("jane@example.com").unwrap(),
            correlation_id: Uuid::max(),
            requested_at: OffsetDateTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn a_job_reads_back_what_was_written() {
        let job = sample();
        assert_eq!(
            Job::decode(&job.encode().unwrap_or_default()).ok(),
            Some(job)
        );
    }

    #[test]
    fn the_body_is_the_agreed_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({
                "v": 1,
                "type": "password_reset",
                "job_id": "00000000-0000-0000-0000-000000000000",
                "email": "jane@example.com",
                "correlation_id": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                "requested_at": "1970-01-01T00:00:00Z"
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_versions_refused() {
        let mut body: serde_json::Value =
            serde_json::from_slice(&sample().encode().unwrap_or_default()).unwrap_or_default();
        body["added_later"] = serde_json::json!(true);
        assert!(Job::decode(body.to_string().as_bytes()).is_ok());
        body["v"] = serde_json::json!(2);
        assert!(matches!(
            Job::decode(body.to_string().as_bytes()),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        assert!(Job::decode(b"not json").is_err());
        let bad_email = String::from_utf8_lossy(&sample().encode().unwrap_or_default())
            .replace("jane@example.com", "nonsense");
        assert!(Job::decode(bad_email.as_bytes()).is_err());
    }
}
