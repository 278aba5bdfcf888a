//! Request payloads, as the facades parse them. Unknown fields are errors: a typo in a
//! script must not silently drop data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::request::TransactionRequest;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartExecutedObsUnit {
    /// The obs unit executed: an integer above 0.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(deserialize_with = "super::whole::i64")]
    pub obs_unit_id: i64,
    /// RFC 3339, a year from 1900 to 9999; the service's clock when absent.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^(19[0-9]{2}|[2-9][0-9]{3})-"))]
    pub start_time: Option<DateTime<Utc>>,
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
        )
    )]
    pub instrument_module: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::meta))]
    pub meta: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FinishStatus {
    Completed,
    Failed,
    Aborted,
}

impl FinishStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinishExecutedObsUnit {
    pub status: FinishStatus,
    /// RFC 3339, a year from 1900 to 9999; the service's clock when absent.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^(19[0-9]{2}|[2-9][0-9]{3})-"))]
    pub end_time: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::meta))]
    pub meta: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChecksumAlgorithm {
    #[default]
    Sha256,
    Sha1,
    Md5,
}

impl ChecksumAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha1 => "sha1",
            Self::Md5 => "md5",
        }
    }

    /// Length of the digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha1 => 40,
            Self::Md5 => 32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDataFileCreate {
    /// No control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
        )
    )]
    pub name: String,
    /// Under the site's data root: not absolute, no `..` segment, no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4096,
            pattern = r"^(?![/\\])(?!(.*[/\\])?\.\.([/\\]|$))[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
        )
    )]
    pub relative_path: String,
    pub executed_obs_unit_id: Uuid,
    pub raw_data_package_id: Option<Uuid>,
    /// Bytes, at least 0.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(deserialize_with = "super::whole::i64")]
    pub size: i64,
    /// The digest in hexadecimal, as long as `checksum_algorithm`'s: 64 digits for
    /// `sha256`, 40 for `sha1`, 32 for `md5`.
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::checksum))]
    pub checksum: String,
    #[serde(default)]
    pub checksum_algorithm: ChecksumAlgorithm,
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
        )
    )]
    pub file_type: Option<String>,
    #[cfg_attr(feature = "openapi", schema(pattern = r"^(19[0-9]{2}|[2-9][0-9]{3})-"))]
    pub created_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::meta))]
    pub meta: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawDataPackageCreate {
    /// No control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
        )
    )]
    pub name: String,
    pub executed_obs_unit_id: Uuid,
    /// Under the site's data root: not absolute, no `..` segment, no control characters.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4096,
            pattern = r"^(?![/\\])(?!(.*[/\\])?\.\.([/\\]|$))[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
        )
    )]
    pub relative_path: Option<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::meta))]
    pub meta: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinalizeRawDataPackage {
    /// Bytes, at least 0.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    pub size: Option<i64>,
    /// The digest in hexadecimal, as long as `checksum_algorithm`'s (`sha256` when absent):
    /// 64 digits for `sha256`, 40 for `sha1`, 32 for `md5`.
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::optional_checksum))]
    pub checksum: Option<String>,
    /// Only with a `checksum` (`null` is as if absent).
    pub checksum_algorithm: Option<ChecksumAlgorithm>,
    /// At least 0.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    pub file_count: Option<i64>,
    #[cfg_attr(feature = "openapi", schema(schema_with = super::schema::meta))]
    pub meta: Option<Map<String, Value>>,
}

/// One write, as both facades hand it to the IngestActor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    StartExecutedObsUnit(StartExecutedObsUnit),
    FinishExecutedObsUnit {
        id: Uuid,
        body: FinishExecutedObsUnit,
    },
    CreateRawDataFile(RawDataFileCreate),
    BulkCreateRawDataFiles {
        files: Vec<RawDataFileCreate>,
    },
    CreateRawDataPackage(RawDataPackageCreate),
    FinalizeRawDataPackage {
        id: Uuid,
        body: FinalizeRawDataPackage,
    },
    /// `POST /transactions`: steps over the model registry's tables.
    Transaction(TransactionRequest),
}

/// The kinds of write, by the names both facades and the stored transactions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    StartExecutedObsUnit,
    FinishExecutedObsUnit,
    CreateRawDataFile,
    BulkCreateRawDataFiles,
    CreateRawDataPackage,
    FinalizeRawDataPackage,
    Transaction,
}

impl OperationKind {
    pub const ALL: [Self; 7] = [
        Self::StartExecutedObsUnit,
        Self::FinishExecutedObsUnit,
        Self::CreateRawDataFile,
        Self::BulkCreateRawDataFiles,
        Self::CreateRawDataPackage,
        Self::FinalizeRawDataPackage,
        Self::Transaction,
    ];

    /// The stable name, as stored with each transaction and used by the TCP facade.
    pub fn name(self) -> &'static str {
        match self {
            Self::StartExecutedObsUnit => "executed_obs_units.start",
            Self::FinishExecutedObsUnit => "executed_obs_units.finish",
            Self::CreateRawDataFile => "raw_data_files.create",
            Self::BulkCreateRawDataFiles => "raw_data_files.bulk",
            Self::CreateRawDataPackage => "raw_data_package.create",
            Self::FinalizeRawDataPackage => "raw_data_package.finalize",
            Self::Transaction => "transactions",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Updates name the record they change.
    pub fn needs_id(self) -> bool {
        matches!(
            self,
            Self::FinishExecutedObsUnit | Self::FinalizeRawDataPackage
        )
    }
}

impl Operation {
    /// A bulk registration or a transaction: a write of possibly many rows, whose
    /// building takes long enough to be done off the IngestActor's turn.
    pub fn writes_many(&self) -> bool {
        matches!(
            self,
            Self::BulkCreateRawDataFiles { .. } | Self::Transaction(_)
        )
    }

    pub fn kind(&self) -> OperationKind {
        match self {
            Self::StartExecutedObsUnit(_) => OperationKind::StartExecutedObsUnit,
            Self::FinishExecutedObsUnit { .. } => OperationKind::FinishExecutedObsUnit,
            Self::CreateRawDataFile(_) => OperationKind::CreateRawDataFile,
            Self::BulkCreateRawDataFiles { .. } => OperationKind::BulkCreateRawDataFiles,
            Self::CreateRawDataPackage(_) => OperationKind::CreateRawDataPackage,
            Self::FinalizeRawDataPackage { .. } => OperationKind::FinalizeRawDataPackage,
            Self::Transaction(_) => OperationKind::Transaction,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in OperationKind::ALL {
            assert_eq!(OperationKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(OperationKind::from_name("executed_obs_units.delete"), None);
    }
}
