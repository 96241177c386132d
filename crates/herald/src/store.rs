//! The durable history store (`history_store = "disk"`): channel streams in one `redb` file,
//! `<data_dir>/history.redb`.
//!
//! Why redb: it is an embedded, pure-Rust key-value store with ACID transactions, a stable file
//! format and copy-on-write pages, so a crash (`kill -9`, a power cut with the default durability)
//! leaves the last committed transaction intact and never a torn one; it needs no C toolchain and
//! no background compaction threads. Each batch of publications the engine hands over is one
//! transaction with one disk sync, so the cost of the sync is shared by everything published
//! meanwhile.
//!
//! Two tables:
//! - `streams`: channel → (epoch, last offset);
//! - `publications`: (channel, offset) → the publication as JSON (event, data, ts, from, and its
//!   idempotency key with its expiry).
//!
//! A file that cannot be opened or read is an error at startup that names the path; the store never
//! starts empty over data it could not read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_core::engine::store::{StoreWrite, StoredPublication, StoredStream, StreamStore};
use herald_core::publication::Publisher;
use herald_core::{ChannelName, HeraldError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

const STREAMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("streams");
const PUBLICATIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("publications");

/// The file name inside `data_dir`.
pub const FILE_NAME: &str = "history.redb";

/// A stored publication's fields besides its key.
#[derive(Serialize, Deserialize)]
struct Record<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<(&'a str, &'a str)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<(&'a str, u64)>,
}

/// The redb-backed store.
pub struct DiskStore {
    db: Database,
    path: PathBuf,
}

fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> HeraldError {
    HeraldError::unavailable(format!("history store {}: {what}: {e}", path.display()))
}

impl DiskStore {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<DiskStore, HeraldError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| failed(data_dir, "cannot create the data directory", e))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| failed(&path, "cannot open", e))?;
        let store = DiskStore { db, path };
        // Create both tables, so that a read of a new store finds them.
        store.write(&[])?;
        Ok(store)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> HeraldError {
        failed(&self.path, what, e)
    }
}

impl StreamStore for DiskStore {
    fn load(&self) -> Result<Vec<StoredStream>, HeraldError> {
        let read = self
            .db
            .begin_read()
            .map_err(|e| self.fail("cannot read", e))?;
        let streams = read
            .open_table(STREAMS)
            .map_err(|e| self.fail("cannot read streams", e))?;
        let publications = read
            .open_table(PUBLICATIONS)
            .map_err(|e| self.fail("cannot read publications", e))?;
        let mut out = Vec::new();
        for entry in streams
            .iter()
            .map_err(|e| self.fail("cannot read streams", e))?
        {
            let (name, meta) = entry.map_err(|e| self.fail("cannot read a stream", e))?;
            let name = name.value();
            let channel = ChannelName::parse(name)
                .map_err(|e| self.fail("a stored channel name is invalid", e.message))?;
            let (epoch, last_offset) = meta.value();
            let mut stored = StoredStream {
                channel: channel.clone(),
                epoch: epoch.to_owned(),
                last_offset,
                publications: Vec::new(),
            };
            let range = publications
                .range((name, 0)..=(name, u64::MAX))
                .map_err(|e| self.fail("cannot read publications", e))?;
            for entry in range {
                let (key, value) = entry.map_err(|e| self.fail("cannot read a publication", e))?;
                let (_, offset) = key.value();
                let bytes = value.value();
                let record: Record = serde_json::from_slice(bytes)
                    .map_err(|e| self.fail("a stored publication is not readable", e))?;
                stored.publications.push(StoredPublication {
                    offset,
                    event: record.event.map(Into::into),
                    data: record.data.to_owned(),
                    ts: record.ts,
                    from: record.from.map(|(user, client)| Publisher {
                        user: user.into(),
                        client: client.into(),
                    }),
                    idempotency: record.key.map(|(k, until)| (k.into(), until)),
                });
            }
            out.push(stored);
        }
        Ok(out)
    }

    fn write(&self, batch: &[StoreWrite]) -> Result<(), HeraldError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.fail("cannot write", e))?;
        {
            let mut streams = txn
                .open_table(STREAMS)
                .map_err(|e| self.fail("cannot write streams", e))?;
            let mut publications = txn
                .open_table(PUBLICATIONS)
                .map_err(|e| self.fail("cannot write publications", e))?;
            let forget_below = |publications: &mut redb::Table<(&str, u64), &[u8]>,
                                channel: &str,
                                below: u64|
             -> Result<(), redb::StorageError> {
                if below == 0 {
                    return Ok(());
                }
                publications.retain_in((channel, 0)..(channel, below), |_, _| false)
            };
            for write in batch {
                match write {
                    StoreWrite::Created { channel, epoch } => {
                        let name = channel.as_str();
                        forget_below(&mut publications, name, u64::MAX)
                            .map_err(|e| self.fail("cannot write", e))?;
                        streams
                            .insert(name, (&**epoch, 0))
                            .map_err(|e| self.fail("cannot write", e))?;
                    }
                    StoreWrite::Appended {
                        publication: p,
                        first_kept,
                        idempotency,
                    } => {
                        let name = p.channel.as_str();
                        let record = Record {
                            event: p.event.as_deref(),
                            data: &p.data,
                            ts: p.ts,
                            from: p.from.as_ref().map(|f| (&*f.user, &*f.client)),
                            key: idempotency.as_ref().map(|(k, until)| (&**k, *until)),
                        };
                        let bytes = serde_json::to_vec(&record)
                            .map_err(|e| self.fail("cannot encode", e))?;
                        if *first_kept <= p.offset {
                            publications
                                .insert((name, p.offset), bytes.as_slice())
                                .map_err(|e| self.fail("cannot write", e))?;
                        }
                        forget_below(&mut publications, name, *first_kept)
                            .map_err(|e| self.fail("cannot write", e))?;
                        streams
                            .insert(name, (&*p.epoch, p.offset))
                            .map_err(|e| self.fail("cannot write", e))?;
                    }
                    StoreWrite::Dropped { channel } => {
                        let name = channel.as_str();
                        forget_below(&mut publications, name, u64::MAX)
                            .map_err(|e| self.fail("cannot write", e))?;
                        streams
                            .remove(name)
                            .map_err(|e| self.fail("cannot write", e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.fail("cannot commit", e))
    }
}

/// Opens the store for a server: `Arc`ed for the engine.
pub fn open(data_dir: &Path) -> Result<Arc<DiskStore>, HeraldError> {
    DiskStore::open(data_dir).map(Arc::new)
}
