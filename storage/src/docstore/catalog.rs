//! The catalog: databases and collections as ArangoDB describes them, kept in the store's `meta`
//! column family (`db/{name}`, `col/{id}`, `out/{id}`, `count/{id}`) and in memory as a
//! `Catalog` that readers share through an `Arc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{corrupt, decode_u64, store_error, Digest, DocStore};
use crate::error::Result;

/// The database that always exists (id 1).
pub const SYSTEM_DATABASE: &str = "_system";

/// A database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    #[serde(with = "u64_string")]
    pub id: u64,
    pub name: String,
}

/// How a collection generates keys and whether users may choose them (ArangoDB's `keyOptions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOptions {
    #[serde(rename = "type", default = "traditional")]
    pub kind: String,
    #[serde(rename = "allowUserKeys", default = "yes")]
    pub allow_user_keys: bool,
}

fn traditional() -> String {
    "traditional".into()
}

fn yes() -> bool {
    true
}

impl Default for KeyOptions {
    fn default() -> KeyOptions {
        KeyOptions {
            kind: traditional(),
            allow_user_keys: true,
        }
    }
}

/// A collection, as logged in its create record and kept in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    #[serde(with = "u64_string")]
    pub id: u64,
    pub name: String,
    pub database: String,
    /// 2 = document collection, 3 = edge collection.
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(rename = "waitForSync", default)]
    pub wait_for_sync: bool,
    #[serde(rename = "keyOptions", default)]
    pub key_options: KeyOptions,
    #[serde(rename = "isSystem", default)]
    pub is_system: bool,
}

impl CollectionInfo {
    /// ArangoDB's `globallyUniqueId`, which the WAL tail calls `cuid`.
    pub fn globally_unique_id(&self) -> String {
        format!("c{}", self.id)
    }
}

/// Databases and collections, by name and by id.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub(super) databases: BTreeMap<String, DatabaseInfo>,
    pub(super) collections: HashMap<u64, Arc<CollectionInfo>>,
    by_name: HashMap<(String, String), u64>,
    /// Collections of the leader that a collection filter left out: not visible here, but their
    /// records are known to be excluded rather than addressed to a collection that is gone.
    pub(super) left_out: HashMap<u64, CollectionInfo>,
}

impl Catalog {
    pub fn database(&self, name: &str) -> Option<&DatabaseInfo> {
        self.databases.get(name)
    }

    pub fn databases(&self) -> impl Iterator<Item = &DatabaseInfo> {
        self.databases.values()
    }

    pub fn collection(&self, database: &str, name: &str) -> Option<Arc<CollectionInfo>> {
        let id = self
            .by_name
            .get(&(database.to_string(), name.to_string()))?;
        self.collections.get(id).cloned()
    }

    pub fn collection_by_id(&self, id: u64) -> Option<Arc<CollectionInfo>> {
        self.collections.get(&id).cloned()
    }

    /// The collections of `database`, ordered by name.
    pub fn collections(&self, database: &str) -> Vec<Arc<CollectionInfo>> {
        let mut list: Vec<_> = self
            .collections
            .values()
            .filter(|c| c.database == database)
            .cloned()
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The largest collection or database id in use.
    pub fn max_id(&self) -> u64 {
        let collections = self.collections.keys().copied().max().unwrap_or(0);
        let databases = self.databases.values().map(|d| d.id).max().unwrap_or(0);
        collections.max(databases)
    }

    pub(super) fn insert_collection(&mut self, info: CollectionInfo) {
        if let Some(old) = self.collections.get(&info.id) {
            self.by_name
                .remove(&(old.database.clone(), old.name.clone()));
        }
        self.by_name
            .insert((info.database.clone(), info.name.clone()), info.id);
        self.collections.insert(info.id, Arc::new(info));
    }

    pub(super) fn remove_collection(&mut self, id: u64) -> Option<Arc<CollectionInfo>> {
        let info = self.collections.remove(&id)?;
        self.by_name
            .remove(&(info.database.clone(), info.name.clone()));
        Some(info)
    }
}

/// The catalog, and each collection's count and digest, as the `meta` column family holds them.
pub(super) type Loaded = (Catalog, HashMap<u64, u64>, HashMap<u64, Digest>);

impl DocStore {
    /// Reads the catalog and the collections' counts and digests from the `meta` column family.
    pub(super) fn load_catalog(&self) -> Result<Loaded> {
        catalog_from(
            self.db
                .iterator_cf(self.meta(), rocksdb::IteratorMode::Start),
        )
    }
}

/// The catalog and the collections' counts and digests from the entries of the `meta` column
/// family (the live ones, or a snapshot's).
pub(super) fn catalog_from(
    entries: impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
) -> Result<Loaded> {
    let mut catalog = Catalog::default();
    catalog.databases.insert(
        SYSTEM_DATABASE.into(),
        DatabaseInfo {
            id: 1,
            name: SYSTEM_DATABASE.into(),
        },
    );
    let mut counts = HashMap::new();
    let mut digests = HashMap::new();
    for item in entries {
        let (key, value) = item.map_err(|e| store_error("read catalog", e))?;
        if let Some(_name) = key.strip_prefix(b"db/") {
            let info: DatabaseInfo =
                serde_json::from_slice(&value).map_err(|_| corrupt("database entry"))?;
            catalog.databases.insert(info.name.clone(), info);
        } else if key.starts_with(b"col/") {
            let info: CollectionInfo =
                serde_json::from_slice(&value).map_err(|_| corrupt("collection entry"))?;
            catalog.insert_collection(info);
        } else if key.starts_with(b"out/") {
            let info: CollectionInfo =
                serde_json::from_slice(&value).map_err(|_| corrupt("left-out collection"))?;
            catalog.left_out.insert(info.id, info);
        } else if let Some(id) = key.strip_prefix(b"count/") {
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let id = id.ok_or_else(|| corrupt("count key"))?;
            counts.insert(id, decode_u64(&value).ok_or_else(|| corrupt("count"))?);
        } else if let Some(id) = key.strip_prefix(b"digest/") {
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let id = id.ok_or_else(|| corrupt("digest key"))?;
            digests.insert(id, Digest::decode(&value).ok_or_else(|| corrupt("digest"))?);
        }
    }
    Ok((catalog, counts, digests))
}

/// Serde for u64 ids written as decimal strings, as ArangoDB writes ids.
mod u64_string {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        match Either::deserialize(deserializer)? {
            Either::Text(text) => text.parse().map_err(D::Error::custom),
            Either::Number(number) => Ok(number),
        }
    }
}
