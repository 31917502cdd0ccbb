//! The store's content-addressed blobs: written to a temp file, checked against their digest,
//! then renamed into `blobs/sha256/`.

use std::fs::{self, File};
use std::io::{self, Read, Write};

use crate::config::{ImageConfig, ImageConfigFile};
use crate::digest::{Digest, DigestWriter};

use super::{io_err, ImageRecord, Store, StoreError, MAX_JSON_BLOB};

impl Store {
    /// A new temp file for a blob being written.
    pub fn temp_blob(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let dir = self.tmp_dir();
        tempfile::Builder::new()
            .prefix(&format!("blob-{}-", std::process::id()))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(io_err("creating temp file in", &dir))
    }

    /// Moves a fully written temp file into place as blob `expected` after checking that its
    /// content hashes to it (`actual`, computed while writing). A mismatch deletes the file.
    pub fn commit_blob(
        &self,
        file: tempfile::NamedTempFile,
        expected: &Digest,
        actual: &Digest,
    ) -> Result<(), StoreError> {
        if expected != actual {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        let temp_path = file.path().to_owned();
        file.as_file()
            .sync_all()
            .map_err(io_err("syncing", &temp_path))?;
        let mut permissions = file
            .as_file()
            .metadata()
            .map_err(io_err("inspecting", &temp_path))?
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o444);
        fs::set_permissions(&temp_path, permissions)
            .map_err(io_err("making read-only", &temp_path))?;
        let dest = self.blob_path(expected);
        file.persist(&dest).map_err(|e| StoreError::Io {
            action: "moving verified blob into place at",
            path: dest.clone(),
            source: e.error,
        })?;
        tracing::debug!(digest = %expected, "blob stored");
        Ok(())
    }

    /// Stores `data` as blob `expected`, verifying it.
    pub fn put_blob_bytes(&self, data: &[u8], expected: &Digest) -> Result<(), StoreError> {
        let actual = Digest::of(data);
        if self.has_blob(expected) && &actual == expected {
            return Ok(());
        }
        let mut file = self.temp_blob()?;
        file.write_all(data)
            .map_err(io_err("writing", &self.tmp_dir()))?;
        self.commit_blob(file, expected, &actual)
    }

    /// Copies a blob from a reader, verifying it. Returns its size.
    pub fn put_blob_reader(
        &self,
        reader: &mut dyn Read,
        expected: &Digest,
    ) -> Result<u64, StoreError> {
        let file = self.temp_blob()?;
        let temp_path = file.path().to_owned();
        let mut writer = DigestWriter::new(io::BufWriter::new(file));
        io::copy(reader, &mut writer).map_err(io_err("writing", &temp_path))?;
        let (actual, size, buffered) = writer.finish();
        let file = buffered.into_inner().map_err(|e| StoreError::Io {
            action: "writing",
            path: temp_path,
            source: e.into_error(),
        })?;
        self.commit_blob(file, expected, &actual)?;
        Ok(size)
    }

    /// Reads a (small) blob: a manifest, index or config.
    pub fn read_json_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobMissing(digest.clone()))
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let size = file.metadata().map_err(io_err("inspecting", &path))?.len();
        if size > MAX_JSON_BLOB {
            return Err(StoreError::JsonBlobTooLarge {
                digest: digest.clone(),
                size,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        file.take(MAX_JSON_BLOB)
            .read_to_end(&mut data)
            .map_err(io_err("reading", &path))?;
        Ok(data)
    }

    /// The parsed config blob of an image.
    pub fn config_file(&self, image: &ImageRecord) -> Result<ImageConfigFile, StoreError> {
        let data = self.read_json_blob(&image.config)?;
        serde_json::from_slice(&data).map_err(|source| StoreError::BadConfig {
            digest: image.config.clone(),
            source,
        })
    }

    /// The run defaults (Entrypoint, Cmd, Env, WorkingDir, User) of an image.
    pub fn image_config(&self, image: &ImageRecord) -> Result<ImageConfig, StoreError> {
        Ok(self.config_file(image)?.config.unwrap_or_default())
    }
}
