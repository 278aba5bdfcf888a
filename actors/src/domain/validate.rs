//! Semantic validation: what a JSON schema cannot say. Everything rejected here would
//! otherwise be rejected by the primary much later, as a dead letter.

use chrono::{DateTime, Datelike, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::requests::*;

/// A caller's mistake, with the offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Size limits of what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most files in one `raw_data_files/bulk` request.
    pub max_bulk_files: usize,
}

const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;

type Check = Result<(), ValidationError>;

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn text(prefix: &str, name: &str, value: &str, max: usize) -> Check {
    let f = || field(prefix, name);
    if value.trim().is_empty() {
        return Err(ValidationError::new(
            "invalid_value",
            f(),
            "must not be empty",
        ));
    }
    if value.chars().count() > max {
        return Err(ValidationError::new(
            "invalid_value",
            f(),
            format!("must be at most {max} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(
            "invalid_value",
            f(),
            "must not contain NUL characters",
        ));
    }
    Ok(())
}

/// A name: text without control characters (a tab, a newline or an escape in a file name
/// breaks every listing and shell that shows it).
fn name_text(prefix: &str, name: &str, value: &str) -> Check {
    text(prefix, name, value, MAX_NAME)?;
    no_control(prefix, name, value)
}

fn no_control(prefix: &str, name: &str, value: &str) -> Check {
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "invalid_value",
            field(prefix, name),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A path relative to the site's data root: no control characters, not absolute (`/…`,
/// `\…`) and no `..` segment (between `/` or `\`), so joining it to the root never
/// leaves the root.
fn relative_path(prefix: &str, name: &str, value: &str) -> Check {
    text(prefix, name, value, MAX_PATH)?;
    no_control(prefix, name, value)?;
    let bad = |message: &str| {
        Err(ValidationError::new(
            "invalid_value",
            field(prefix, name),
            message,
        ))
    };
    if value.starts_with(['/', '\\']) {
        return bad("must be relative (not start with `/` or `\\`)");
    }
    if value.split(['/', '\\']).any(|segment| segment == "..") {
        return bad("must not contain a `..` segment");
    }
    Ok(())
}

fn opt_text(prefix: &str, name: &str, value: Option<&str>, max: usize) -> Check {
    value.map_or(Ok(()), |v| text(prefix, name, v, max))
}

fn non_negative(prefix: &str, name: &str, value: i64) -> Check {
    if value < 0 {
        return Err(ValidationError::new(
            "invalid_value",
            field(prefix, name),
            format!("must not be negative (got {value})"),
        ));
    }
    Ok(())
}

/// PostgreSQL and every consumer downstream handle these years; a typo like year 20250 is
/// caught here instead of as a dead letter.
fn timestamp(prefix: &str, name: &str, value: Option<&DateTime<Utc>>) -> Check {
    match value {
        Some(t) if !(1900..=9999).contains(&t.year()) => Err(ValidationError::new(
            "invalid_value",
            field(prefix, name),
            "must be a time between the years 1900 and 9999",
        )),
        _ => Ok(()),
    }
}

fn checksum(prefix: &str, value: &str, algorithm: ChecksumAlgorithm) -> Check {
    let expected = algorithm.hex_len();
    if value.len() != expected || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ValidationError::new(
            "invalid_checksum",
            field(prefix, "checksum"),
            format!(
                "must be {expected} hexadecimal digits for {}",
                algorithm.as_str()
            ),
        ));
    }
    Ok(())
}

/// PostgreSQL's `jsonb` rejects `\u0000`; catch it at the door.
fn meta(prefix: &str, value: Option<&Map<String, Value>>) -> Check {
    use super::values::has_nul;
    match value {
        Some(m) if m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) => {
            Err(ValidationError::new(
                "invalid_value",
                field(prefix, "meta"),
                "must not contain NUL characters",
            ))
        }
        _ => Ok(()),
    }
}

impl StartExecutedObsUnit {
    pub fn validate(&self) -> Check {
        if self.obs_unit_id <= 0 {
            return Err(ValidationError::new(
                "invalid_value",
                "obs_unit_id",
                "must be a positive integer",
            ));
        }
        timestamp("", "start_time", self.start_time.as_ref())?;
        opt_text(
            "",
            "instrument_module",
            self.instrument_module.as_deref(),
            MAX_NAME,
        )?;
        meta("", self.meta.as_ref())
    }
}

impl FinishExecutedObsUnit {
    pub fn validate(&self) -> Check {
        timestamp("", "end_time", self.end_time.as_ref())?;
        meta("", self.meta.as_ref())
    }
}

impl RawDataFileCreate {
    pub fn validate(&self, prefix: &str) -> Check {
        name_text(prefix, "name", &self.name)?;
        relative_path(prefix, "relative_path", &self.relative_path)?;
        non_negative(prefix, "size", self.size)?;
        checksum(prefix, &self.checksum, self.checksum_algorithm)?;
        opt_text(prefix, "file_type", self.file_type.as_deref(), MAX_NAME)?;
        timestamp(prefix, "created_at", self.created_at.as_ref())?;
        meta(prefix, self.meta.as_ref())
    }
}

impl RawDataPackageCreate {
    pub fn validate(&self) -> Check {
        name_text("", "name", &self.name)?;
        if let Some(path) = self.relative_path.as_deref() {
            relative_path("", "relative_path", path)?;
        }
        meta("", self.meta.as_ref())
    }
}

impl FinalizeRawDataPackage {
    pub fn validate(&self) -> Check {
        if let Some(size) = self.size {
            non_negative("", "size", size)?;
        }
        if let Some(count) = self.file_count {
            non_negative("", "file_count", count)?;
        }
        match (&self.checksum, self.checksum_algorithm) {
            (Some(c), algorithm) => checksum("", c, algorithm.unwrap_or_default())?,
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    "invalid_value",
                    "checksum_algorithm",
                    "given without a checksum",
                ))
            }
            (None, None) => {}
        }
        meta("", self.meta.as_ref())
    }
}

impl Operation {
    pub fn validate(&self, limits: &Limits) -> Check {
        match self {
            Self::StartExecutedObsUnit(r) => r.validate(),
            Self::FinishExecutedObsUnit { body, .. } => body.validate(),
            Self::CreateRawDataFile(r) => r.validate(""),
            Self::BulkCreateRawDataFiles { files } => {
                if files.is_empty() {
                    return Err(ValidationError::new(
                        "invalid_value",
                        "files",
                        "must contain at least one file",
                    ));
                }
                if files.len() > limits.max_bulk_files {
                    return Err(ValidationError::new(
                        "too_many_files",
                        "files",
                        format!(
                            "{} files in one request; at most {} are allowed",
                            files.len(),
                            limits.max_bulk_files
                        ),
                    ));
                }
                files
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, f)| f.validate(&format!("files[{i}]")))
            }
            Self::CreateRawDataPackage(r) => r.validate(),
            Self::FinalizeRawDataPackage { body, .. } => body.validate(),
            // Checked against the model registry as it is built (builder.rs).
            Self::Transaction(_) => Ok(()),
        }
    }
}

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                "invalid_idempotency_key",
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as one client's own: `<length of client>:<client>/<key>`, so that no two
    /// (client, key) pairs meet in one Redis key.
    pub fn for_client(self, client: &str) -> Self {
        Self(format!("{}:{client}/{}", client.len(), self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn file() -> RawDataFileCreate {
        RawDataFileCreate {
            name: "a.fits".into(),
            relative_path: "2026/a.fits".into(),
            executed_obs_unit_id: Uuid::nil(),
            raw_data_package_id: None,
            size: 10,
            checksum: "ab".repeat(32),
            checksum_algorithm: ChecksumAlgorithm::Sha256,
            file_type: None,
            created_at: None,
            meta: None,
        }
    }

    const LIMITS: Limits = Limits { max_bulk_files: 3 };

    #[test]
    fn a_good_file_passes() {
        assert_eq!(
            Operation::CreateRawDataFile(file()).validate(&LIMITS),
            Ok(())
        );
    }

    #[test]
    fn bad_files_name_their_field() {
        type Mutation = fn(&mut RawDataFileCreate);
        let cases: Vec<(Mutation, &str)> = vec![
            (|f| f.size = -1, "size"),
            (|f| f.checksum = "xyz".into(), "checksum"),
            (|f| f.checksum = "ab".repeat(16), "checksum"),
            (|f| f.name = " ".into(), "name"),
            (|f| f.name = "a\0b".into(), "name"),
            (|f| f.relative_path = "p".repeat(5000), "relative_path"),
            (|f| f.name = "a\tb.fits".into(), "name"),
            (|f| f.name = "a\u{1b}[2Jb".into(), "name"),
            (
                |f| f.relative_path = "../etc/passwd".into(),
                "relative_path",
            ),
            (|f| f.relative_path = "2026/../../x".into(), "relative_path"),
            (|f| f.relative_path = "2026\\..\\x".into(), "relative_path"),
            (|f| f.relative_path = "/etc/passwd".into(), "relative_path"),
            (|f| f.relative_path = "\\share\\x".into(), "relative_path"),
            (|f| f.relative_path = "a\nb".into(), "relative_path"),
            (|f| f.relative_path = "a\u{85}b".into(), "relative_path"),
            (
                |f| {
                    f.meta = Some(
                        serde_json::json!({"k": ["x\u{0}"]})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                },
                "meta",
            ),
        ];
        for (mutate, expected) in cases {
            let mut f = file();
            mutate(&mut f);
            let err = Operation::CreateRawDataFile(f)
                .validate(&LIMITS)
                .unwrap_err();
            assert_eq!(err.field, expected);
        }
    }

    #[test]
    fn relative_paths_may_hold_dots_that_are_not_a_parent_segment() {
        for ok in [
            "a..b/c",
            "./a.fits",
            "2026/.../x",
            "..a/b",
            "a/b..",
            "dir/ünï.fits",
        ] {
            let mut f = file();
            f.relative_path = ok.into();
            assert_eq!(f.validate(""), Ok(()), "{ok}");
        }
    }

    #[test]
    fn md5_checksums_have_their_own_length() {
        let mut f = file();
        f.checksum_algorithm = ChecksumAlgorithm::Md5;
        assert_eq!(f.validate("").unwrap_err().field, "checksum");
        f.checksum = "0f".repeat(16);
        assert_eq!(f.validate(""), Ok(()));
    }

    #[test]
    fn bulk_is_bounded_and_names_the_bad_element() {
        let empty = Operation::BulkCreateRawDataFiles { files: vec![] };
        assert_eq!(empty.validate(&LIMITS).unwrap_err().field, "files");
        let big = Operation::BulkCreateRawDataFiles {
            files: vec![file(); 4],
        };
        assert_eq!(big.validate(&LIMITS).unwrap_err().code, "too_many_files");
        let mut bad = vec![file(); 3];
        bad[2].size = -5;
        let err = Operation::BulkCreateRawDataFiles { files: bad }
            .validate(&LIMITS)
            .unwrap_err();
        assert_eq!(err.field, "files[2].size");
    }

    #[test]
    fn obs_unit_ids_and_years_are_checked() {
        let start = StartExecutedObsUnit {
            obs_unit_id: 0,
            start_time: None,
            instrument_module: None,
            meta: None,
        };
        assert_eq!(start.validate().unwrap_err().field, "obs_unit_id");
        let late = StartExecutedObsUnit {
            obs_unit_id: 1,
            start_time: "+20250-01-01T00:00:00Z".parse().ok(),
            ..start
        };
        assert!(late.start_time.is_some());
        assert_eq!(late.validate().unwrap_err().field, "start_time");
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("run-42/file-7").is_ok());
        for bad in ["", "has space", "tab\t", "ü", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
