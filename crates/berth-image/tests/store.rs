//! The image store and archives against real files: blobs, crash recovery, concurrent
//! ingest across threads and processes, image records, rmi, gc, load/save/import, hostile
//! archives. Every test works in its own tempdir, so they run in parallel.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_image::archive::{self, ArchiveError, ImportChanges};
use berth_image::digest::Digest;
use berth_image::reference::Reference;
use berth_image::store::{Store, StoreError};
use serde_json::json;

/// One module, so that `cargo test -p berth-image store` selects these tests too.
mod store {
    use super::*;

    // ---------------------------------------------------------------------------------------
    // Helpers

    fn new_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("image")).unwrap();
        (dir, store)
    }

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    /// Deterministic pseudo-random bytes (the same in every process).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    /// A layer tar holding `files` (with their parent directories).
    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = HashSet::new();
        for (path, data) in files {
            let mut parts: Vec<&str> = path.split('/').collect();
            parts.pop();
            let mut acc = String::new();
            for p in parts {
                acc.push_str(p);
                acc.push('/');
                if dirs.insert(acc.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, &acc, std::io::empty()).unwrap();
                }
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn config_json(diff_ids: &[Digest], label: &str) -> Vec<u8> {
        json!({
        "architecture": archive::host_arch(),
        "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"test": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes()
    }

    fn manifest_json(
        config: &Digest,
        config_size: usize,
        layers: &[(String, Digest, usize)],
    ) -> Vec<u8> {
        json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": layers.iter().map(|(m, d, s)| json!({"mediaType": m, "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
    }

    /// An image put into the store blob by blob (what a pull does), not yet committed.
    struct TestImage {
        manifest: Digest,
        config: Digest,
        layers: Vec<(Digest, Digest)>,
    }

    fn put_image(store: &Store, layers: &[Vec<u8>], label: &str) -> TestImage {
        let mut descs = Vec::new();
        let mut pairs = Vec::new();
        for (i, tar) in layers.iter().enumerate() {
            let diff = Digest::of(tar);
            // Alternate compressed and plain layers.
            let (blob, media) = if i % 2 == 0 {
                (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
            } else {
                (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
            };
            let (d, n) = store.put_blob(&mut &blob[..], None).unwrap();
            descs.push((media.to_string(), d.clone(), n as usize));
            pairs.push((d, diff));
        }
        let diffs: Vec<Digest> = pairs.iter().map(|p| p.1.clone()).collect();
        let config = config_json(&diffs, label);
        let config_d = store.put_blob_bytes(&config, None).unwrap();
        let manifest = manifest_json(&config_d, config.len(), &descs);
        let manifest_d = store.put_blob_bytes(&manifest, None).unwrap();
        TestImage {
            manifest: manifest_d,
            config: config_d,
            layers: pairs,
        }
    }

    fn commit(store: &Store, img: &TestImage, tags: &[&str]) -> berth_image::store::Image {
        for (blob, diff) in &img.layers {
            store.ensure_layer(blob, diff).unwrap();
        }
        let refs: Vec<Reference> = tags.iter().map(|t| r(t)).collect();
        store.commit_image(&img.manifest, &refs).unwrap()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// A pid that is certainly dead: a child we started and reaped.
    fn dead_pid() -> u32 {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    // ---------------------------------------------------------------------------------------
    // Helper processes: the test binary re-run with BERTH_STORE_HELPER set.

    fn spawn_helper(mode: &str, root: &Path, work: &Path) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::helper_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BERTH_STORE_HELPER", mode)
            .env("BERTH_STORE_ROOT", root)
            .env("BERTH_STORE_WORK", work)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    const SHARED_BLOB_LEN: usize = 1 << 20;

    fn wait_for(path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One "download" of the shared blob: counts itself in `work/writers` if it had to write.
    fn download(store: &Store, work: &Path) -> bool {
        let data = pattern(SHARED_BLOB_LEN, 7);
        let d = Digest::of(&data);
        wait_for(&work.join("go"));
        let mut ing = store.begin_ingest(&d).unwrap();
        if ing.already_present() {
            return false;
        }
        let mut counter = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(work.join("writers"))
            .unwrap();
        counter
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .unwrap();
        let start = ing.partial_len() as usize;
        for chunk in data[start..].chunks(32 * 1024) {
            ing.writer().write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(8));
        }
        ing.commit().unwrap();
        true
    }

    #[test]
    fn helper_process() {
        let Ok(mode) = std::env::var("BERTH_STORE_HELPER") else {
            return;
        };
        let root = PathBuf::from(std::env::var("BERTH_STORE_ROOT").unwrap());
        let work = PathBuf::from(std::env::var("BERTH_STORE_WORK").unwrap());
        let store = Store::open(&root).unwrap();
        match mode.as_str() {
            "download" => {
                download(&store, &work);
            }
            "half-then-hang" => {
                let data = pattern(SHARED_BLOB_LEN, 9);
                let mut ing = store.begin_ingest(&Digest::of(&data)).unwrap();
                ing.writer()
                    .write_all(&data[..SHARED_BLOB_LEN / 2])
                    .unwrap();
                ing.writer().flush().unwrap();
                fs::write(work.join("ready"), b"").unwrap();
                std::thread::sleep(Duration::from_secs(120));
            }
            other => panic!("unknown helper mode {other}"),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Blobs

    #[test]
    fn put_blob_verifies_and_names_both_digests_on_mismatch() {
        let (_dir, store) = new_store();
        let data = b"{\"hello\":1}".to_vec();
        let d = Digest::of(&data);
        assert!(!store.has_blob(&d));
        assert_eq!(
            store.put_blob(&mut &data[..], None).unwrap(),
            (d.clone(), data.len() as u64)
        );
        assert_eq!(
            store.put_blob(&mut &data[..], Some(&d)).unwrap(),
            (d.clone(), data.len() as u64)
        );
        assert!(store.has_blob(&d));
        assert_eq!(store.read_blob(&d).unwrap(), data);
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);

        let wrong = Digest::of(b"something else");
        let err = store
            .put_blob(&mut &b"other content"[..], Some(&wrong))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{msg}");
        assert!(
            msg.contains(&wrong.to_string())
                && msg.contains(&Digest::of(b"other content").to_string()),
            "{msg}"
        );
        assert!(!store.has_blob(&wrong) && !store.has_blob(&Digest::of(b"other content")));
        assert!(
            names_in(&store.root().join("ingest")).is_empty(),
            "temporaries left behind"
        );

        let missing = Digest::of(b"missing");
        assert!(matches!(
            store.read_blob(&missing),
            Err(StoreError::BlobNotFound(_))
        ));
        assert!(store
            .read_blob(&missing)
            .unwrap_err()
            .to_string()
            .contains("not in the store"));
    }

    #[test]
    fn read_blob_caps_size_and_detects_corruption() {
        let (_dir, store) = new_store();
        let big = vec![b'x'; (berth_image::store::MAX_METADATA_BLOB + 1) as usize];
        let (d, _) = store.put_blob(&mut &big[..], None).unwrap();
        let err = store.read_blob(&d).unwrap_err();
        assert!(matches!(err, StoreError::BlobTooLarge { .. }), "{err}");
        assert!(err.to_string().contains(&d.to_string()));

        let small = store.put_blob_bytes(b"config", None).unwrap();
        let path = store.blob_path(&small);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"tampered").unwrap();
        let err = store.read_blob(&small).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn crash_leftovers_are_removed_and_partial_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        let data = pattern(300_000, 1);
        let d = Digest::of(&data);
        let dead = dead_pid();
        {
            let store = Store::open(&root).unwrap();
            let mut ing = store.begin_ingest(&d).unwrap();
            assert!(!ing.already_present());
            assert_eq!(ing.partial_len(), 0);
            ing.writer().write_all(&data[..100_000]).unwrap();
            // Dropped without commit: an interrupted download.
        }
        // What a crashed process leaves: temporaries named with its pid.
        let stale_file = root.join("ingest").join(format!("put.tmp-{dead}-0"));
        fs::write(&stale_file, b"junk").unwrap();
        let stale_layer = root
            .join("layers")
            .join(format!("{}.tmp-{dead}-3", d.hex()));
        fs::create_dir_all(stale_layer.join("fs/usr/bin")).unwrap();
        fs::write(stale_layer.join("fs/usr/bin/x"), b"x").unwrap();
        let stale_meta = root.join(format!("meta.json.tmp-{dead}-1"));
        fs::write(&stale_meta, b"{").unwrap();
        // A live writer's temporary (ours) must survive.
        let live = root
            .join("ingest")
            .join(format!("put.tmp-{}-999", std::process::id()));
        fs::write(&live, b"in progress").unwrap();

        let store = Store::open(&root).unwrap();
        assert!(!stale_file.exists() && !stale_layer.exists() && !stale_meta.exists());
        assert!(live.exists());
        let mut ing = store.begin_ingest(&d).unwrap();
        assert_eq!(ing.partial_len(), 100_000);
        let mut h = ing.prefix_hasher();
        assert_eq!(h.clone().finish(), Digest::of(&data[..100_000]));
        h.update(&data[100_000..]);
        assert_eq!(h.finish(), d);
        ing.writer().write_all(&data[100_000..]).unwrap();
        ing.commit().unwrap();
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), data);
        let left: Vec<String> = names_in(&root.join("ingest"));
        assert_eq!(
            left,
            vec![live.file_name().unwrap().to_str().unwrap().to_string()]
        );
        // Already there now.
        assert!(store.begin_ingest(&d).unwrap().already_present());

        // Interrupted after the last byte but before the commit: the next ingest commits
        // the complete partial instead of downloading again.
        let whole = pattern(5000, 2);
        let wd = Digest::of(&whole);
        let mut ing = store.begin_ingest(&wd).unwrap();
        ing.writer().write_all(&whole).unwrap();
        drop(ing);
        assert!(!store.has_blob(&wd));
        assert!(store.begin_ingest(&wd).unwrap().already_present());
        assert_eq!(store.read_blob(&wd).unwrap(), whole);
    }

    #[test]
    fn corrupt_metadata_is_an_error_never_a_reset() {
        let (_dir, store) = new_store();
        let img = put_image(&store, &[layer_tar(&[("a", b"1")])], "meta");
        commit(&store, &img, &["keep:1"]);
        let meta = store.root().join("meta.json");
        let good = fs::read(&meta).unwrap();
        fs::write(&meta, &good[..good.len() / 2]).unwrap();
        for err in [
            store.list().unwrap_err(),
            store.commit_image(&img.manifest, &[r("x:1")]).unwrap_err(),
            store.gc(&HashSet::new()).unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::CorruptMeta { .. }), "{err}");
            assert!(err.to_string().contains("meta.json"), "{err}");
        }
        // Nothing was overwritten or collected: restoring the file restores the store.
        fs::write(&meta, &good).unwrap();
        assert_eq!(store.resolve("keep:1").unwrap().id, img.config);
        assert!(store.has_blob(&img.manifest));
    }

    #[test]
    fn killed_writer_leaves_a_resumable_partial() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        let store = Store::open(&root).unwrap();
        let mut child = spawn_helper("half-then-hang", &root, dir.path());
        wait_for(&dir.path().join("ready"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();

        let data = pattern(SHARED_BLOB_LEN, 9);
        let d = Digest::of(&data);
        // The kernel released the dead writer's lock; its bytes are there to resume from.
        let mut ing = store.begin_ingest(&d).unwrap();
        assert_eq!(ing.partial_len(), (SHARED_BLOB_LEN / 2) as u64);
        ing.writer()
            .write_all(&data[SHARED_BLOB_LEN / 2..])
            .unwrap();
        ing.commit().unwrap();
        assert_eq!(store.read_blob(&d).unwrap(), data);
    }

    #[test]
    fn bad_download_is_discarded_on_commit() {
        let (_dir, store) = new_store();
        let d = Digest::of(b"the real content");
        let mut ing = store.begin_ingest(&d).unwrap();
        ing.writer().write_all(b"an imposter").unwrap();
        let err = ing.commit().unwrap_err();
        assert!(
            err.to_string().contains(&d.to_string())
                && err
                    .to_string()
                    .contains(&Digest::of(b"an imposter").to_string())
        );
        assert!(!store.has_blob(&d));
        // The bad partial is gone: the next attempt starts from zero.
        assert_eq!(store.begin_ingest(&d).unwrap().partial_len(), 0);
    }

    #[test]
    fn commit_refuses_a_partial_written_behind_its_back() {
        // The digest is computed from what went through the writer, so bytes that reached
        // the partial some other way must not be published under it.
        let (_dir, store) = new_store();
        let data = pattern(10_000, 3);
        let d = Digest::of(&data);
        let mut ing = store.begin_ingest(&d).unwrap();
        ing.writer().write_all(&data).unwrap();
        let partial = store
            .root()
            .join("ingest")
            .join(format!("{}.partial", d.hex()));
        fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .unwrap()
            .write_all(b"extra")
            .unwrap();
        let err = ing.commit().unwrap_err();
        assert!(err.to_string().contains("10005 bytes"), "{err}");
        assert!(!store.has_blob(&d) && !partial.exists());
    }

    #[test]
    fn concurrent_ingest_downloads_once_across_threads_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        let work = dir.path().to_path_buf();
        let store = Store::open(&root).unwrap();
        let children: Vec<Child> = (0..3)
            .map(|_| spawn_helper("download", &root, &work))
            .collect();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (store, work) = (store.clone(), work.clone());
                std::thread::spawn(move || download(&store, &work))
            })
            .collect();
        // Give the processes time to start and queue on the lock, then release everyone.
        std::thread::sleep(Duration::from_millis(300));
        fs::write(work.join("go"), b"").unwrap();
        for t in threads {
            t.join().unwrap();
        }
        for mut c in children {
            assert!(c.wait().unwrap().success(), "helper process failed");
        }
        let writers = fs::read_to_string(work.join("writers")).unwrap();
        assert_eq!(writers.lines().count(), 1, "writers: {writers:?}");
        let data = pattern(SHARED_BLOB_LEN, 7);
        assert_eq!(fs::read(store.blob_path(&Digest::of(&data))).unwrap(), data);
        assert!(
            names_in(&root.join("ingest")).is_empty(),
            "ingest not clean: {:?}",
            names_in(&root.join("ingest"))
        );
    }

    // ---------------------------------------------------------------------------------------
    // Layers

    #[test]
    fn ensure_layer_unpacks_once_and_checks_the_diff_id() {
        let (_dir, store) = new_store();
        let tar = layer_tar(&[("etc/hello", b"hi\n"), ("bin/tool", b"#!/bin/sh\n")]);
        let blob = store.put_blob_bytes(&gzip(&tar), None).unwrap();
        let diff = Digest::of(&tar);

        let wrong = Digest::of(b"not the diff");
        let err = store.ensure_layer(&blob, &wrong).unwrap_err();
        assert!(matches!(err, StoreError::DiffIdMismatch { .. }), "{err}");
        assert!(!store.layer_path(&wrong).exists());

        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| store.ensure_layer(&blob, &diff).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.iter().all(|p| *p == store.layer_path(&diff)));
        assert_eq!(
            fs::read(store.layer_path(&diff).join("etc/hello")).unwrap(),
            b"hi\n"
        );
        // Only the finished layer: no temporaries, no lock files.
        assert_eq!(
            names_in(&store.root().join("layers")),
            vec![diff.hex().to_string()]
        );

        let missing = Digest::of(b"no such blob");
        assert!(matches!(
            store.ensure_layer(&missing, &Digest::of(b"x")),
            Err(StoreError::BlobNotFound(_))
        ));
    }

    // ---------------------------------------------------------------------------------------
    // Images

    #[test]
    fn commit_tag_and_resolve_by_name_and_id() {
        let (_dir, store) = new_store();
        let img = put_image(
            &store,
            &[layer_tar(&[("a", b"1")]), layer_tar(&[("b", b"2")])],
            "one",
        );
        let image = commit(&store, &img, &["busybox", "localhost/x:y"]);
        assert_eq!(image.id, img.config);
        assert_eq!(image.manifest_digest, img.manifest);
        assert_eq!(
            image.tags,
            vec!["docker.io/library/busybox:latest", "localhost/x:y"]
        );
        assert_eq!(image.layers.len(), 2);
        assert_eq!(
            image.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(image.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(image.size, image.layers.iter().map(|l| l.size).sum::<u64>());

        let hex = img.config.hex();
        for name in [
            "busybox".to_string(),
            "busybox:latest".into(),
            "docker.io/library/busybox:latest".into(),
            "localhost/x:y".into(),
            hex[..12].to_string(),
            hex.to_string(),
            img.config.to_string(),
            format!("sha256:{}", &hex[..16]),
            format!("busybox@{}", img.manifest),
        ] {
            assert_eq!(store.resolve(&name).unwrap().id, img.config, "{name}");
        }
        let err = store.resolve("nope").unwrap_err();
        assert_eq!(err.to_string(), "image \"nope\" not found");
        assert!(matches!(
            store.resolve("busybox:1.0"),
            Err(StoreError::ImageNotFound(_))
        ));
        assert!(matches!(
            store.resolve(&hex[..8]),
            Err(StoreError::ImageNotFound(_))
        ));

        store.tag("busybox", &r("localhost/copy:v2")).unwrap();
        assert_eq!(store.resolve("localhost/copy:v2").unwrap().id, img.config);
        assert!(store.tag("nope", &r("a:b")).is_err());
        assert!(store
            .tag("busybox", &r(&format!("a@{}", img.manifest)))
            .is_err());

        // A second image takes the busybox tag over.
        let img2 = put_image(&store, &[layer_tar(&[("c", b"3")])], "two");
        commit(&store, &img2, &["busybox:latest"]);
        assert_eq!(store.resolve("busybox").unwrap().id, img2.config);
        let list = store.list().unwrap();
        assert_eq!(list.len(), 2);
        let first = list.iter().find(|i| i.id == img.config).unwrap();
        assert_eq!(first.tags, vec!["localhost/copy:v2", "localhost/x:y"]);
        // Records survive reopening.
        let again = Store::open(store.root()).unwrap();
        assert_eq!(again.list().unwrap(), list);
    }

    #[test]
    fn commit_rejects_inconsistent_images() {
        let (_dir, store) = new_store();
        let tar = layer_tar(&[("a", b"1")]);
        let (blob, size) = store.put_blob(&mut &tar[..], None).unwrap();
        let layer = (
            "application/vnd.oci.image.layer.v1.tar".to_string(),
            blob.clone(),
            size as usize,
        );

        // Config lists two diff ids, the manifest one layer.
        let config = config_json(&[blob.clone(), blob.clone()], "x");
        let cd = store.put_blob_bytes(&config, None).unwrap();
        let m = store
            .put_blob_bytes(
                &manifest_json(&cd, config.len(), std::slice::from_ref(&layer)),
                None,
            )
            .unwrap();
        let err = store.commit_image(&m, &[]).unwrap_err();
        assert!(err.to_string().contains("1 layers, but config"), "{err}");

        // A layer blob that is not in the store.
        let config = config_json(std::slice::from_ref(&blob), "y");
        let cd = store.put_blob_bytes(&config, None).unwrap();
        let ghost = (
            "application/vnd.oci.image.layer.v1.tar".to_string(),
            Digest::of(b"ghost"),
            5,
        );
        let m = store
            .put_blob_bytes(&manifest_json(&cd, config.len(), &[ghost]), None)
            .unwrap();
        assert!(matches!(
            store.commit_image(&m, &[]),
            Err(StoreError::BlobNotFound(_))
        ));

        // A layer with a media type that is not a layer, and a wrong size.
        let odd = ("text/plain".to_string(), blob.clone(), size as usize);
        let m = store
            .put_blob_bytes(&manifest_json(&cd, config.len(), &[odd]), None)
            .unwrap();
        assert!(store
            .commit_image(&m, &[])
            .unwrap_err()
            .to_string()
            .contains("not a layer"));
        let short = (layer.0.clone(), blob.clone(), 3);
        let m = store
            .put_blob_bytes(&manifest_json(&cd, config.len(), &[short]), None)
            .unwrap();
        assert!(store
            .commit_image(&m, &[])
            .unwrap_err()
            .to_string()
            .contains("the manifest says 3"));

        // An index is not a manifest.
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
        let m = store
            .put_blob_bytes(index.to_string().as_bytes(), None)
            .unwrap();
        assert!(store
            .commit_image(&m, &[])
            .unwrap_err()
            .to_string()
            .contains("index"));

        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn rmi_semantics() {
        let (_dir, store) = new_store();
        let img = put_image(&store, &[layer_tar(&[("a", b"1")])], "rmi");
        commit(&store, &img, &["app:1", "app:2", "other:1"]);
        let id = img.config.to_string();

        // By tag: untag only while other tags remain.
        let rm = store.remove("app:1", false).unwrap();
        assert_eq!(rm.untagged, vec!["docker.io/library/app:1"]);
        assert!(rm.deleted.is_empty());
        // By id with tags in two repositories: refused without force.
        let err = store.remove(&id, false).unwrap_err();
        assert!(matches!(err, StoreError::RemoveConflict { .. }), "{err}");
        assert!(err.to_string().contains("force"));
        assert_eq!(store.resolve("app:2").unwrap().id, img.config);
        let rm = store.remove(&img.config.hex()[..12], true).unwrap();
        assert_eq!(
            rm.untagged,
            vec!["docker.io/library/app:2", "docker.io/library/other:1"]
        );
        assert_eq!(rm.deleted, vec![img.config.clone()]);
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.remove("app:2", false),
            Err(StoreError::ImageNotFound(_))
        ));

        // The last tag takes the image with it; tags in one repository go with the id.
        let img2 = put_image(&store, &[layer_tar(&[("b", b"2")])], "rmi2");
        commit(&store, &img2, &["solo:1"]);
        let rm = store.remove("solo:1", false).unwrap();
        assert_eq!(rm.deleted, vec![img2.config.clone()]);
        let img3 = put_image(&store, &[layer_tar(&[("c", b"3")])], "rmi3");
        commit(&store, &img3, &["same:1", "same:2"]);
        let rm = store.remove(&img3.config.to_string(), false).unwrap();
        assert_eq!(rm.untagged.len(), 2);
        assert_eq!(rm.deleted, vec![img3.config.clone()]);
        // Untagged (dangling) images go by id.
        let img4 = put_image(&store, &[layer_tar(&[("d", b"4")])], "rmi4");
        commit(&store, &img4, &[]);
        let rm = store.remove(&img4.config.hex()[..12], false).unwrap();
        assert_eq!(rm.deleted, vec![img4.config.clone()]);
    }

    #[test]
    fn gc_removes_exactly_the_unreferenced() {
        let (_dir, store) = new_store();
        let shared = layer_tar(&[("shared", b"s")]);
        let keep = put_image(&store, &[shared.clone(), layer_tar(&[("k", b"k")])], "keep");
        let gone = put_image(&store, &[shared.clone(), layer_tar(&[("g", b"g")])], "gone");
        commit(&store, &keep, &["keep:1"]);
        commit(&store, &gone, &["gone:1"]);
        // An orphan blob, an orphan unpacked layer, and one that a container still uses.
        let orphan_blob = store.put_blob_bytes(b"orphan", None).unwrap();
        let orphan_tar = layer_tar(&[("o", b"o")]);
        let ob = store.put_blob_bytes(&orphan_tar, None).unwrap();
        store.ensure_layer(&ob, &Digest::of(&orphan_tar)).unwrap();
        let used_tar = layer_tar(&[("u", b"u")]);
        let ub = store.put_blob_bytes(&used_tar, None).unwrap();
        let used = Digest::of(&used_tar);
        store.ensure_layer(&ub, &used).unwrap();
        // A partial download nobody is resuming.
        let mut ing = store.begin_ingest(&Digest::of(b"never finished")).unwrap();
        ing.writer().write_all(b"never").unwrap();
        drop(ing);

        store.remove("gone:1", false).unwrap();
        let report = store.gc(&HashSet::from([used.clone()])).unwrap();

        let mut want_blobs: Vec<String> = [&keep.manifest, &keep.config]
            .into_iter()
            .chain(keep.layers.iter().map(|l| &l.0))
            .map(|d| d.hex().to_string())
            .collect();
        want_blobs.sort();
        assert_eq!(names_in(&store.root().join("blobs/sha256")), want_blobs);
        let mut want_layers: Vec<String> = keep
            .layers
            .iter()
            .map(|l| l.1.hex().to_string())
            .chain([used.hex().to_string()])
            .collect();
        want_layers.sort();
        assert_eq!(names_in(&store.root().join("layers")), want_layers);
        assert!(names_in(&store.root().join("ingest")).is_empty());
        // gone's manifest, config and own layer blob; the orphan blob; the orphan layer's blob
        // and the used layer's blob (the layer dir stays, the blob is unreferenced).
        assert_eq!(report.blobs_removed, 6, "{report:?}");
        assert_eq!(report.layers_removed, 2, "{report:?}");
        assert_eq!(report.temps_removed, 1, "{report:?}");
        assert!(report.bytes_freed > 0);
        assert!(!store.has_blob(&orphan_blob));

        // What remains is intact and a second gc finds nothing.
        let img = store.resolve("keep:1").unwrap();
        for l in &img.layers {
            assert!(store.layer_path(&l.diff_id).is_dir());
        }
        let again = store.gc(&HashSet::from([used])).unwrap();
        assert_eq!(again, Default::default());
    }

    #[test]
    fn gc_waits_for_leases() {
        let (_dir, store) = new_store();
        let lease = store.lease().unwrap();
        let d = store.put_blob_bytes(b"in flight", None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = store.clone();
        let t = std::thread::spawn(move || {
            let report = s2.gc(&HashSet::new()).unwrap();
            tx.send(report).unwrap();
        });
        // While the lease is held gc blocks, and the blob stays.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(store.has_blob(&d));
        // A waiting gc does not block further shared users (a pull's threads take leases
        // while one is held): no deadlock.
        let d2 = store.put_blob_bytes(b"also in flight", None).unwrap();
        assert!(store.has_blob(&d2));
        drop(lease);
        let report = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(report.blobs_removed, 2);
    }

    // ---------------------------------------------------------------------------------------
    // Archives

    /// Appends a file with a raw (unvalidated) name: the tar crate refuses to write hostile
    /// paths, an attacker's tool does not.
    fn append_raw<W: Write>(
        b: &mut tar::Builder<W>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn add_file<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) {
        append_raw(b, name, tar::EntryType::Regular, None, data);
    }

    /// A docker-archive as `docker save` (before 25) writes it: `<id>.json`, `<layer>/layer.tar`,
    /// manifest.json last; the second layer is a symlink to the first's tar (docker dedups so).
    fn docker_archive(tags: &[&str]) -> (Vec<u8>, Digest) {
        let l1 = layer_tar(&[("etc/os-release", b"ID=test\n")]);
        let l2 = layer_tar(&[("usr/share/msg", b"hello from layer two\n")]);
        let (d1, d2) = (Digest::of(&l1), Digest::of(&l2));
        let config = config_json(&[d1.clone(), d2.clone(), d1.clone()], "docker-archive");
        let config_d = Digest::of(&config);
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, &format!("{}/layer.tar", d1.hex()), &l1);
        add_file(&mut b, &format!("{}/layer.tar", d2.hex()), &l2);
        append_raw(
            &mut b,
            "dup/layer.tar",
            tar::EntryType::Symlink,
            Some(&format!("../{}/layer.tar", d1.hex())),
            b"",
        );
        add_file(&mut b, &format!("{}.json", config_d.hex()), &config);
        let manifest = json!([{
            "Config": format!("{}.json", config_d.hex()),
            "RepoTags": tags,
            "Layers": [format!("{}/layer.tar", d1.hex()), format!("./{}/layer.tar", d2.hex()), "dup/layer.tar"],
        }]);
        add_file(&mut b, "manifest.json", manifest.to_string().as_bytes());
        (b.into_inner().unwrap(), config_d)
    }

    /// An oci-archive (as skopeo/buildah write them): gzip layers, and a nested index with the
    /// host's platform and another one.
    fn oci_archive(ref_name: &str) -> (Vec<u8>, Digest) {
        let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
        let mut add = |data: Vec<u8>| {
            let d = Digest::of(&data);
            blobs.push((d.clone(), data));
            d
        };
        let l1 = layer_tar(&[("etc/hostname", b"oci\n")]);
        let l1gz = gzip(&l1);
        let l1d = add(l1gz.clone());
        let config = config_json(&[Digest::of(&l1)], "oci-archive");
        let cd = add(config.clone());
        let manifest = manifest_json(
            &cd,
            config.len(),
            &[(
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                l1d,
                l1gz.len(),
            )],
        );
        let md = add(manifest.clone());
        let other = add(b"{\"not\":\"for this platform\"}".to_vec());
        let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(), "size": 27,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": manifest.len(),
             "platform": {"os": "linux", "architecture": archive::host_arch()}},
        ],
    })
    .to_string()
    .into_bytes();
        let nd = add(nested.clone());
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd.to_string(), "size": nested.len(),
                           "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
        });
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (d, data) in &blobs {
            add_file(&mut b, &format!("blobs/sha256/{}", d.hex()), data);
        }
        add_file(&mut b, "index.json", index.to_string().as_bytes());
        (b.into_inner().unwrap(), cd)
    }

    type ErrorCheck = fn(&ArchiveError) -> bool;

    fn assert_store_empty(store: &Store) {
        assert!(store.list().unwrap().is_empty(), "images recorded");
        assert!(
            names_in(&store.root().join("blobs/sha256")).is_empty(),
            "blobs stored"
        );
        assert!(
            names_in(&store.root().join("layers")).is_empty(),
            "layers unpacked"
        );
        assert!(
            names_in(&store.root().join("ingest")).is_empty(),
            "temporaries left"
        );
    }

    #[test]
    fn load_docker_archive_plain_and_gzipped() {
        for gz in [false, true] {
            let (_dir, store) = new_store();
            let (tar, id) = docker_archive(&["busybox:latest", "localhost/mine:1"]);
            let input = if gz { gzip(&tar) } else { tar };
            let images = archive::load(&store, &input[..]).unwrap();
            assert_eq!(images.len(), 1);
            let img = &images[0];
            assert_eq!(img.id, id);
            assert_eq!(
                img.tags,
                vec!["docker.io/library/busybox:latest", "localhost/mine:1"]
            );
            assert_eq!(img.layers.len(), 3);
            assert!(img
                .layers
                .iter()
                .all(|l| l.media_type == "application/vnd.oci.image.layer.v1.tar"
                    && l.blob == l.diff_id));
            assert_eq!(store.resolve("localhost/mine:1").unwrap().id, id);
            let fs2 = store.layer_path(&img.layers[1].diff_id);
            assert_eq!(
                fs::read_to_string(fs2.join("usr/share/msg")).unwrap(),
                "hello from layer two\n"
            );
            assert!(names_in(&store.root().join("ingest")).is_empty());
            // Loading again changes nothing (same manifest digest).
            let again = archive::load(&store, &input[..]).unwrap();
            assert_eq!(again[0].manifest_digest, img.manifest_digest);
            assert_eq!(store.list().unwrap().len(), 1);
        }
    }

    #[test]
    fn load_oci_archive_picks_the_host_platform() {
        let (_dir, store) = new_store();
        let (tar, id) = oci_archive("localhost/oci:v1");
        let images = archive::load(&store, &gzip(&tar)[..]).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].id, id);
        assert_eq!(images[0].tags, vec!["localhost/oci:v1"]);
        assert_eq!(
            images[0].layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let img = store.resolve("localhost/oci:v1").unwrap();
        assert_eq!(
            fs::read_to_string(
                store
                    .layer_path(&img.layers[0].diff_id)
                    .join("etc/hostname")
            )
            .unwrap(),
            "oci\n"
        );

        // A bare ref name ("v1") names no repository: loaded untagged, found by id.
        let (_dir2, store2) = new_store();
        let (tar, id) = oci_archive("v1");
        let images = archive::load(&store2, &tar[..]).unwrap();
        assert!(images[0].tags.is_empty());
        assert_eq!(store2.resolve(&id.hex()[..12]).unwrap().id, id);
    }

    #[test]
    fn save_then_load_round_trip() {
        let (_dir, a) = new_store();
        let (tar, oci_id) = oci_archive("localhost/oci:v1");
        archive::load(&a, &tar[..]).unwrap();
        let (tar, docker_id) = docker_archive(&["app:1", "app:2"]);
        archive::load(&a, &tar[..]).unwrap();

        let mut out = Vec::new();
        archive::save(
            &a,
            &["localhost/oci:v1", "app:2", &docker_id.hex()[..12]],
            &mut out,
        )
        .unwrap();

        let (_dir2, b) = new_store();
        let loaded = archive::load(&b, &out[..]).unwrap();
        assert_eq!(loaded.len(), 2);
        let oci = b.resolve("localhost/oci:v1").unwrap();
        assert_eq!(oci.id, oci_id);
        // Saved uncompressed, as docker does; same diff ids.
        let orig = a.resolve("localhost/oci:v1").unwrap();
        assert_eq!(
            oci.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
            orig.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
        );
        assert_eq!(
            oci.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        let docker = b.resolve("app:1").unwrap();
        assert_eq!(docker.id, docker_id);
        assert_eq!(
            docker.tags,
            vec!["docker.io/library/app:1", "docker.io/library/app:2"]
        );
        assert_eq!(
            fs::read_to_string(b.layer_path(&oci.layers[0].diff_id).join("etc/hostname")).unwrap(),
            "oci\n"
        );
        // Unknown names fail before anything is written.
        let mut out = Vec::new();
        assert!(matches!(
            archive::save(&a, &["nope"], &mut out),
            Err(ArchiveError::Store(StoreError::ImageNotFound(_)))
        ));
    }

    /// Our docker-archive is what other tools read: skopeo (from containers/image, as podman
    /// load) inspects it and converts it to an oci-archive, which we load back.
    #[test]
    fn save_is_readable_by_skopeo_and_skopeo_archives_load() {
        if Command::new("skopeo").arg("--version").output().is_err() {
            eprintln!("skipping: skopeo not installed");
            return;
        }
        let (dir, a) = new_store();
        let (tar, id) = docker_archive(&["localhost/interop:1"]);
        archive::load(&a, &tar[..]).unwrap();
        let saved = dir.path().join("saved.tar");
        archive::save(
            &a,
            &["localhost/interop:1"],
            fs::File::create(&saved).unwrap(),
        )
        .unwrap();

        let out = Command::new("skopeo")
            .args([
                "inspect",
                "--config",
                &format!("docker-archive:{}", saved.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo inspect: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["config"]["Labels"]["test"], "docker-archive");

        let oci = dir.path().join("skopeo-oci.tar");
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                &format!("docker-archive:{}", saved.display()),
                &format!("oci-archive:{}:localhost/interop:2", oci.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_dir2, b) = new_store();
        let images = archive::load(&b, fs::File::open(&oci).unwrap()).unwrap();
        assert_eq!(images.len(), 1);
        // skopeo re-serialises the config when converting to OCI: compare content, not ids.
        let orig = a.resolve(&id.to_string()).unwrap();
        let copy = &images[0];
        assert_eq!(copy.tags, vec!["localhost/interop:2"]);
        assert_eq!(copy.config.config(), orig.config.config());
        assert_eq!(copy.config.rootfs(), orig.config.rootfs());

        // And skopeo's own docker-archive (its layout differs from docker's) loads too.
        let theirs = dir.path().join("skopeo-docker.tar");
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                &format!("oci-archive:{}", oci.display()),
                &format!("docker-archive:{}:localhost/interop:3", theirs.display()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let images = archive::load(&b, fs::File::open(&theirs).unwrap()).unwrap();
        assert_eq!(images[0].tags, vec!["localhost/interop:3"]);
        assert_eq!(images[0].config.rootfs(), orig.config.rootfs());
        assert_eq!(
            fs::read_to_string(b.layer_path(&copy.layers[1].diff_id).join("usr/share/msg"))
                .unwrap(),
            "hello from layer two\n"
        );
    }

    #[test]
    fn import_busybox_rootfs() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("skipping: /bin/busybox (busybox-static) not installed");
            return;
        }
        let (dir, store) = new_store();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &rootfs).unwrap();
        let tarball = gzip(&b.into_inner().unwrap());

        let mut changes = ImportChanges::default();
        changes.apply(r#"CMD ["/bin/sh"]"#).unwrap();
        changes.apply("ENV PATH=/bin").unwrap();
        changes.apply("WORKDIR /root").unwrap();
        let img =
            archive::import(&store, &tarball[..], Some(&r("localhost/bb:1")), &changes).unwrap();
        assert_eq!(img.tags, vec!["localhost/bb:1"]);
        assert_eq!(img.layers.len(), 1);
        assert_eq!(
            img.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(img.layers[0].size, tarball.len() as u64);
        assert_eq!(img.config.os().to_string(), "linux");
        assert_eq!(img.config.architecture().to_string(), archive::host_arch());
        let cfg = img.config.config().as_ref().unwrap();
        assert_eq!(cfg.cmd().as_deref(), Some(&["/bin/sh".to_string()][..]));
        assert_eq!(cfg.env().as_deref(), Some(&["PATH=/bin".to_string()][..]));
        assert_eq!(cfg.working_dir().as_deref(), Some("/root"));

        // The unpacked busybox runs.
        let fs_root = store.layer_path(&img.layers[0].diff_id);
        let out = Command::new(fs_root.join("bin/busybox"))
            .args(["echo", "hello"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
        assert!(fs::symlink_metadata(fs_root.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(store.resolve("localhost/bb:1").unwrap().id, img.id);

        // zstd and plain tarballs too, untagged.
        let plain = layer_tar(&[("x", b"y")]);
        let z = zstd::encode_all(&plain[..], 3).unwrap();
        let img = archive::import(&store, &z[..], None, &ImportChanges::default()).unwrap();
        assert_eq!(
            img.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(img.layers[0].diff_id, Digest::of(&plain));
        let img = archive::import(&store, &plain[..], None, &ImportChanges::default()).unwrap();
        assert_eq!(img.layers[0].blob, Digest::of(&plain));

        // Not a tarball: nothing stored.
        let (_d, s2) = new_store();
        assert!(matches!(
            archive::import(
                &s2,
                &b"hello, not a tar"[..],
                None,
                &ImportChanges::default()
            ),
            Err(ArchiveError::Import(_))
        ));
        assert!(matches!(
            archive::import(&s2, &b""[..], None, &ImportChanges::default()),
            Err(ArchiveError::Import(_))
        ));
        assert_store_empty(&s2);
    }

    #[test]
    fn hostile_archives_are_rejected_and_store_nothing() {
        let (tar, _) = docker_archive(&["ok:1"]);
        let l = layer_tar(&[("f", b"x")]);
        let ld = Digest::of(&l);
        let config = config_json(std::slice::from_ref(&ld), "hostile");
        let cd = Digest::of(&config);
        let with_manifest =
            |layers: serde_json::Value, extra: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
                let mut b = tar::Builder::new(Vec::new());
                add_file(&mut b, "layer.tar", &l);
                add_file(&mut b, &format!("{}.json", cd.hex()), &config);
                extra(&mut b);
                let m = json!([{"Config": format!("{}.json", cd.hex()), "RepoTags": ["x:1"], "Layers": layers}]);
                add_file(&mut b, "manifest.json", m.to_string().as_bytes());
                b.into_inner().unwrap()
            };

        let mut cases: Vec<(&str, Vec<u8>, ErrorCheck)> = Vec::new();
        // Entries with ".." or absolute names.
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "../../etc/evil", b"x");
        cases.push(("dotdot entry", b.into_inner().unwrap(), |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        }));
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "/etc/evil", b"x");
        cases.push(("absolute entry", b.into_inner().unwrap(), |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        }));
        // A symlink out of the archive.
        let mut b = tar::Builder::new(Vec::new());
        append_raw(
            &mut b,
            "a/layer.tar",
            tar::EntryType::Symlink,
            Some("../../../etc/shadow"),
            b"",
        );
        cases.push(("escaping symlink", b.into_inner().unwrap(), |e| {
            matches!(e, ArchiveError::UnsafePath { .. })
        }));
        // manifest.json pointing outside, or at nothing.
        cases.push((
            "manifest path outside",
            with_manifest(json!(["../../../etc/passwd"]), &|_| {}),
            |e| matches!(e, ArchiveError::UnsafeReference { .. }),
        ));
        cases.push((
            "manifest absolute path",
            with_manifest(json!(["/etc/passwd"]), &|_| {}),
            |e| matches!(e, ArchiveError::UnsafeReference { .. }),
        ));
        cases.push((
            "missing layer",
            with_manifest(json!(["nope.tar"]), &|_| {}),
            |e| matches!(e, ArchiveError::Missing { .. }),
        ));
        // A layer whose content is not its diff id.
        cases.push((
            "layer digest mismatch",
            with_manifest(json!(["other.tar"]), &|b| {
                add_file(b, "other.tar", b"not the layer")
            }),
            |e| matches!(e, ArchiveError::LayerMismatch { .. }),
        ));
        // A config whose name promises another digest.
        let mut b = tar::Builder::new(Vec::new());
        let fake = Digest::of(b"fake");
        add_file(&mut b, &format!("{}.json", fake.hex()), &config);
        add_file(&mut b, "layer.tar", &l);
        let m = json!([{"Config": format!("{}.json", fake.hex()), "Layers": ["layer.tar"]}]);
        add_file(&mut b, "manifest.json", m.to_string().as_bytes());
        cases.push(("config digest mismatch", b.into_inner().unwrap(), |e| {
            matches!(e, ArchiveError::BlobMismatch { .. })
        }));
        // An oci blob whose content does not match its name (small and large ones).
        for size in [10usize, 3 << 20] {
            let mut b = tar::Builder::new(Vec::new());
            add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            add_file(
                &mut b,
                &format!("blobs/sha256/{}", ld.hex()),
                &vec![b'z'; size],
            );
            cases.push(("oci blob mismatch", b.into_inner().unwrap(), |e| {
                matches!(e, ArchiveError::BlobMismatch { .. })
            }));
        }
        // A blob name that is a link to other content (inside the archive).
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let decoy = br#"{"schemaVersion":2,"layers":[]}"#;
        add_file(
            &mut b,
            &format!("blobs/sha256/{}", Digest::of(decoy).hex()),
            decoy,
        );
        let claimed = Digest::of(b"the manifest the index promises");
        append_raw(
            &mut b,
            &format!("blobs/sha256/{}", claimed.hex()),
            tar::EntryType::Symlink,
            Some(Digest::of(decoy).hex()),
            b"",
        );
        let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": claimed.to_string(), "size": 10}]});
        add_file(&mut b, "index.json", index.to_string().as_bytes());
        cases.push(
            ("blob link to other content", b.into_inner().unwrap(), |e| {
                matches!(e, ArchiveError::BlobMismatch { .. })
            }),
        );
        // A gzip'd layer that unpacks to something else than the config says.
        let wrong = gzip(&layer_tar(&[("f", b"different")]));
        cases.push((
            "compressed layer diff id mismatch",
            with_manifest(json!(["wrong.tar.gz"]), &|b| {
                add_file(b, "wrong.tar.gz", &wrong)
            }),
            |e| matches!(e, ArchiveError::Store(StoreError::DiffIdMismatch { .. })),
        ));
        // Garbage and foreign formats.
        cases.push((
            "not a tar",
            b"definitely not a tar archive, not even close......".repeat(20),
            |_| true,
        ));
        let mut b = tar::Builder::new(Vec::new());
        add_file(&mut b, "hello.txt", b"hi");
        cases.push(("no manifest", b.into_inner().unwrap(), |e| {
            matches!(e, ArchiveError::Format(_))
        }));
        cases.push(("truncated", tar[..tar.len() / 2].to_vec(), |_| true));

        for (name, input, check) in cases {
            let (_dir, store) = new_store();
            let err = archive::load(&store, &input[..]).unwrap_err();
            assert!(check(&err), "{name}: unexpected error {err:?}");
            let msg = err.to_string();
            assert!(
                !msg.is_empty() && msg.chars().next().unwrap().is_lowercase(),
                "{name}: {msg}"
            );
            if name != "compressed layer diff id mismatch" {
                assert_store_empty(&store);
            } else {
                // Its blobs went in before the unpack found the lie: no image, no layer, and
                // gc takes the blobs.
                assert!(store.list().unwrap().is_empty());
                assert!(names_in(&store.root().join("layers")).is_empty());
                store.gc(&HashSet::new()).unwrap();
                assert_store_empty(&store);
            }
        }
    }

    #[test]
    fn image_not_found_message_names_the_image() {
        let (_dir, store) = new_store();
        let err = store.resolve("docker.io/library/ghost:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image \"docker.io/library/ghost:1\" not found"
        );
    }
}
