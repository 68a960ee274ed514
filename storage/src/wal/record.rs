//! Records: one logged operation each, mirroring ArangoDB's WAL markers and their type numbers.
//!
//! A record carries no tick of its own: inside a block the records have consecutive ticks
//! starting at the block's first tick, so a record's tick is `tick_first + index`. That lets a
//! caller encode and compress its records before the writer has assigned ticks.
//!
//! Names (`db`, `collection`, `key`) are UTF-8 and at most `u16::MAX` bytes; `data` is opaque to
//! the WAL (the document store writes JSON there: the full new document for `DocumentPut`, the
//! collection definition for `CollectionCreate`, and so on).

use std::fmt;

use crate::error::{Error, Result};
use crate::tick::Tick;

/// The kind of a record, with ArangoDB's marker type number (`TRI_replication_operation_e`) as
/// its value, so the `type` field of `/_api/wal/tail` is `kind as u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RecordType {
    DatabaseCreate = 1100,
    DatabaseDrop = 1101,
    CollectionCreate = 2000,
    CollectionDrop = 2001,
    CollectionRename = 2002,
    /// A change of collection properties.
    CollectionChange = 2003,
    CollectionTruncate = 2004,
    IndexCreate = 2100,
    IndexDrop = 2101,
    TransactionBegin = 2200,
    TransactionCommit = 2201,
    TransactionAbort = 2202,
    /// Insert, replace or update: `data` is always the complete new document.
    DocumentPut = 2300,
    /// A put of a key that did not exist when it was written (the leader read it under the
    /// key's lock), so the store writer does not look it up. ArangoDB's API shows it as 2300.
    DocumentInsert = 2301,
    DocumentRemove = 2302,
}

impl RecordType {
    pub const ALL: [RecordType; 15] = [
        RecordType::DatabaseCreate,
        RecordType::DatabaseDrop,
        RecordType::CollectionCreate,
        RecordType::CollectionDrop,
        RecordType::CollectionRename,
        RecordType::CollectionChange,
        RecordType::CollectionTruncate,
        RecordType::IndexCreate,
        RecordType::IndexDrop,
        RecordType::TransactionBegin,
        RecordType::TransactionCommit,
        RecordType::TransactionAbort,
        RecordType::DocumentPut,
        RecordType::DocumentInsert,
        RecordType::DocumentRemove,
    ];

    /// ArangoDB's marker type number, as the replication API shows it.
    pub fn marker_type(self) -> u16 {
        match self {
            RecordType::DocumentInsert => RecordType::DocumentPut as u16,
            kind => kind as u16,
        }
    }

    /// The number a record of this type carries in the WAL: ArangoDB's marker number, but
    /// 2301 for [`RecordType::DocumentInsert`].
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The record type a WAL record's number stands for, or `None`.
    pub fn from_code(value: u16) -> Option<RecordType> {
        RecordType::ALL
            .into_iter()
            .find(|kind| kind.code() == value)
    }

    /// Whether records of this type write a whole document.
    pub fn is_put(self) -> bool {
        matches!(self, RecordType::DocumentPut | RecordType::DocumentInsert)
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, *self as u16)
    }
}

/// One logged operation, borrowing its fields: built by a caller for encoding, or decoded from a
/// block's decompressed payload without copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: RecordType,
    /// Transaction id; 0 for an operation outside a multi-document transaction.
    pub tid: u64,
    pub db: &'a str,
    /// The collection's identifier as the document store chooses it (ArangoDB's `cuid`).
    pub collection: &'a str,
    /// The document's `_key`, for document records; empty otherwise.
    pub key: &'a str,
    pub data: &'a [u8],
}

/// Size of a record's fixed part.
///
/// Format: { type: u16 LE | db_bytes: u16 LE | collection_bytes: u16 LE | key_bytes: u16 LE |
///           data_bytes: u32 LE | tid: u64 LE | db | collection | key | data }
pub const RECORD_FIXED_BYTES: usize = 20;

impl<'a> Record<'a> {
    /// A document insert, replace or update carrying the full new document.
    pub fn put(db: &'a str, collection: &'a str, key: &'a str, document: &'a [u8]) -> Self {
        Record {
            kind: RecordType::DocumentPut,
            tid: 0,
            db,
            collection,
            key,
            data: document,
        }
    }

    /// A document removal; `data` may carry `{"_key":..,"_rev":..}`.
    pub fn remove(db: &'a str, collection: &'a str, key: &'a str, data: &'a [u8]) -> Self {
        Record {
            kind: RecordType::DocumentRemove,
            tid: 0,
            db,
            collection,
            key,
            data,
        }
    }

    /// Bytes this record takes in a block's uncompressed payload.
    pub fn encoded_bytes(&self) -> usize {
        RECORD_FIXED_BYTES
            + self.db.len()
            + self.collection.len()
            + self.key.len()
            + self.data.len()
    }

    /// Appends the encoding of this record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let name_bytes = |name: &str, what: &str| {
            u16::try_from(name.len()).map_err(|_| {
                Error::InvalidRecord(format!(
                    "{what} of {} bytes exceeds {}",
                    name.len(),
                    u16::MAX
                ))
            })
        };
        let db_bytes = name_bytes(self.db, "database name")?;
        let collection_bytes = name_bytes(self.collection, "collection name")?;
        let key_bytes = name_bytes(self.key, "key")?;
        let data_bytes = u32::try_from(self.data.len()).map_err(|_| {
            Error::InvalidRecord(format!("data of {} bytes exceeds 4 GiB", self.data.len()))
        })?;
        out.reserve(self.encoded_bytes());
        out.extend_from_slice(&self.kind.code().to_le_bytes());
        out.extend_from_slice(&db_bytes.to_le_bytes());
        out.extend_from_slice(&collection_bytes.to_le_bytes());
        out.extend_from_slice(&key_bytes.to_le_bytes());
        out.extend_from_slice(&data_bytes.to_le_bytes());
        out.extend_from_slice(&self.tid.to_le_bytes());
        out.extend_from_slice(self.db.as_bytes());
        out.extend_from_slice(self.collection.as_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(self.data);
        Ok(())
    }
}

/// Iterates the records of a block's decompressed payload with their ticks, validating every
/// length and name before use. Yields exactly the block's record count, then checks that the
/// payload was consumed exactly.
pub struct Records<'a> {
    rest: &'a [u8],
    next_tick: Tick,
    remaining_count: u32,
}

impl<'a> Records<'a> {
    pub(crate) fn new(payload: &'a [u8], tick_first: Tick, record_count: u32) -> Records<'a> {
        Records {
            rest: payload,
            next_tick: tick_first,
            remaining_count: record_count,
        }
    }

    fn decode_one(&mut self) -> std::result::Result<Record<'a>, &'static str> {
        let fixed = self
            .rest
            .get(..RECORD_FIXED_BYTES)
            .ok_or("record header cut short")?;
        let u16_at = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]);
        let kind = RecordType::from_code(u16_at(0)).ok_or("unknown record type")?;
        let db_bytes = usize::from(u16_at(2));
        let collection_bytes = usize::from(u16_at(4));
        let key_bytes = usize::from(u16_at(6));
        let data_bytes = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]) as usize;
        let mut tid = [0u8; 8];
        tid.copy_from_slice(&fixed[12..20]);
        let tid = u64::from_le_bytes(tid);
        let variable = db_bytes + collection_bytes + key_bytes + data_bytes;
        let body = self.rest[RECORD_FIXED_BYTES..]
            .get(..variable)
            .ok_or("record body cut short")?;
        let (db, body) = body.split_at(db_bytes);
        let (collection, body) = body.split_at(collection_bytes);
        let (key, data) = body.split_at(key_bytes);
        let name = |bytes| std::str::from_utf8(bytes).map_err(|_| "record name is not UTF-8");
        let record = Record {
            kind,
            tid,
            db: name(db)?,
            collection: name(collection)?,
            key: name(key)?,
            data,
        };
        self.rest = &self.rest[RECORD_FIXED_BYTES + variable..];
        Ok(record)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = std::result::Result<(Tick, Record<'a>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining_count == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.rest = &[];
            return Some(Err("bytes left after the last record"));
        }
        self.remaining_count -= 1;
        let tick = self.next_tick;
        self.next_tick = tick.checked_next().unwrap_or(Tick::MAX);
        match self.decode_one() {
            Ok(record) => Some(Ok((tick, record))),
            Err(reason) => {
                self.remaining_count = 0;
                self.rest = &[];
                Some(Err(reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every record type shows ArangoDB's marker number (an insert shows as a put), and
    // its number in the WAL maps back to it.
    #[test]
    fn marker_numbers_round_trip() {
        assert_eq!(RecordType::DocumentPut.marker_type(), 2300);
        assert_eq!(RecordType::DocumentInsert.marker_type(), 2300);
        assert_eq!(RecordType::DocumentInsert.code(), 2301);
        assert_eq!(RecordType::DocumentRemove.marker_type(), 2302);
        assert_eq!(RecordType::CollectionTruncate.marker_type(), 2004);
        assert_eq!(RecordType::DatabaseDrop.marker_type(), 1101);
        for kind in RecordType::ALL {
            assert_eq!(RecordType::from_code(kind.code()), Some(kind));
            if kind != RecordType::DocumentInsert {
                assert_eq!(kind.code(), kind.marker_type());
            }
        }
        assert_eq!(RecordType::from_code(2303), None);
        assert_eq!(RecordType::from_code(0), None);
    }

    // Goal: a record decodes to what was encoded, and every cut of its bytes is refused.
    #[test]
    fn record_round_trip_and_cuts() {
        let record = Record {
            kind: RecordType::DocumentPut,
            tid: 77,
            db: "_system",
            collection: "users",
            key: "k1",
            data: br#"{"_key":"k1","v":1}"#,
        };
        let mut bytes = Vec::new();
        record.encode_into(&mut bytes).expect("encode");
        assert_eq!(bytes.len(), record.encoded_bytes());
        let decoded: Vec<_> = Records::new(&bytes, Tick::new(9), 1).collect();
        assert_eq!(decoded, vec![Ok((Tick::new(9), record))]);
        for cut in 0..bytes.len() {
            let decoded: Vec<_> = Records::new(&bytes[..cut], Tick::new(9), 1).collect();
            assert!(
                matches!(decoded.as_slice(), [Err(_)]),
                "cut at {cut} accepted"
            );
        }
        let extra: Vec<_> = Records::new(&[bytes.as_slice(), b"x"].concat(), Tick::new(9), 1)
            .map(|r| r.is_ok())
            .collect();
        assert_eq!(extra, vec![true, false]);
    }

    // Goal: names over 64 KiB are refused with a clear error instead of being truncated.
    #[test]
    fn oversized_key_is_refused() {
        let key = "k".repeat(70_000);
        let record = Record::put("_system", "c", &key, b"{}");
        let err = record
            .encode_into(&mut Vec::new())
            .expect_err("must refuse");
        assert!(matches!(err, Error::InvalidRecord(message) if message.contains("key")));
    }
}
