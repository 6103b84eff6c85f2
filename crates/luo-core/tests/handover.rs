//! The handover image under property tests (SPEC §7 steps 2, 6, 7): round trips
//! keep everything, and damaged images are refused with an error, never a panic.

mod common;

use common::*;
use luo_core::handover::{FileImage, Handover, HandoverError, HandoverRef, SessionImage};
use luo_core::{Limits, Orchestrator, State};
use luo_uapi::rfc_v4::Event;
use proptest::prelude::*;

fn file_image() -> impl Strategy<Value = FileImage> {
    (
        any::<u64>(),
        "[a-z]{1,8}-v[0-9]",
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(token, compatible, data)| FileImage {
            token,
            compatible,
            data,
            fd_index: 0,
        })
}

/// Structurally valid images: unique names and tokens, fd indexes a permutation.
fn image() -> impl Strategy<Value = Handover> {
    let session = (
        "[a-zA-Z0-9_.-]{1,55}",
        any::<u32>(),
        proptest::collection::vec(file_image(), 0..6),
    );
    (
        any::<u64>(),
        "/[a-z/]{0,30}",
        proptest::collection::vec(session, 0..6),
        any::<u64>(),
    )
        .prop_map(|(epoch, previous_exe, sessions, seed)| {
            let mut names = std::collections::HashSet::new();
            let mut sessions: Vec<SessionImage> = sessions
                .into_iter()
                .filter(|(name, _, _)| names.insert(name.clone()))
                .map(|(name, owner, mut files)| {
                    let mut tokens = std::collections::HashSet::new();
                    files.retain(|f| tokens.insert(f.token));
                    SessionImage { name, owner, files }
                })
                .collect();
            // Hand out fd indexes in a shuffled but complete order.
            let n: usize = sessions.iter().map(|s| s.files.len()).sum();
            let mut order: Vec<u32> = (0..n as u32).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut it = order.into_iter();
            for s in &mut sessions {
                for f in &mut s.files {
                    f.fd_index = it.next().unwrap_or_default();
                }
            }
            Handover {
                epoch,
                previous_exe,
                sessions,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(h in image()) {
        prop_assert_eq!(Handover::decode(&h.encode()), Ok(h));
    }

    /// The outgoing epoch writes its image through a borrowed view: the bytes
    /// must be exactly those of the owned image (the golden v1 test pins those).
    #[test]
    fn a_borrowed_view_encodes_to_the_same_bytes(h in image()) {
        let view = h.view();
        prop_assert_eq!(view.encode(), h.encode());
        prop_assert_eq!(view.fd_count(), h.fd_count());
        prop_assert_eq!(&view.to_owned(), &h);
        let bytes = h.encode();
        let decoded = HandoverRef::decode(&bytes).expect("the borrowed decode reads it");
        prop_assert_eq!(decoded.to_owned(), h);
    }

    /// CRC-32 catches every single-bit error in the body; the header fields catch
    /// theirs: no flipped bit goes unnoticed.
    #[test]
    fn every_single_bit_flip_is_refused(h in image(), bit in any::<prop::sample::Index>()) {
        let mut bytes = h.encode();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Handover::decode(&bytes).is_err(), "bit {} flipped and accepted", bit);
        prop_assert!(HandoverRef::decode(&bytes).is_err(), "bit {} flipped, view accepted", bit);
    }

    #[test]
    fn every_truncation_is_refused(h in image(), cut in any::<prop::sample::Index>()) {
        let bytes = h.encode();
        let len = cut.index(bytes.len());
        prop_assert!(Handover::decode(&bytes[..len]).is_err());
        prop_assert!(HandoverRef::decode(&bytes[..len]).is_err());
    }

    /// Arbitrary damage: never a panic. (A random body can only be accepted if its
    /// CRC matches, so a structurally valid result is the only other outcome.)
    #[test]
    fn mutated_images_never_panic(
        h in image(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = h.encode();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        // Both decoders agree on what they accept.
        prop_assert_eq!(
            Handover::decode(&bytes).ok(),
            HandoverRef::decode(&bytes).ok().map(|v| v.to_owned())
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Handover::decode(&bytes);
        let _ = HandoverRef::decode(&bytes);
    }

    /// Bodies with a valid header and CRC but hostile contents still decode safely.
    #[test]
    fn hostile_bodies_with_valid_crc_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
        let mut bytes = Handover { epoch: 0, previous_exe: String::new(), sessions: vec![] }.encode();
        bytes.truncate(luo_core::handover::HEADER_SIZE);
        bytes[40..48].copy_from_slice(&(body.len() as u64).to_le_bytes());
        bytes[48..52].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        prop_assert_eq!(
            Handover::decode(&bytes).ok(),
            HandoverRef::decode(&bytes).ok().map(|v| v.to_owned())
        );
    }
}

#[test]
fn a_version_bump_is_refused_by_name() {
    let mut bytes = Handover {
        epoch: 1,
        previous_exe: "/x".into(),
        sessions: vec![],
    }
    .encode();
    bytes[8 + "luod-handover-v".len()] = b'2';
    assert_eq!(
        Handover::decode(&bytes),
        Err(HandoverError::UnknownFormat("luod-handover-v2".into()))
    );
}

/// The engine's own round trip, with real fds: what one epoch froze is what the
/// next one finds, session by session, token by token, byte by byte.
#[test]
fn orchestrator_round_trip_keeps_sessions_tokens_and_data() {
    let (mut o, _) = orchestrator();
    let mut want = Vec::new();
    for (name, uid, tokens) in [
        ("a", 0, vec![5u64, 1, 9]),
        ("b", 1000, vec![]),
        ("c", 1001, vec![u64::MAX]),
    ] {
        let id = o
            .create_session(name, luo_core::Caller { uid })
            .expect("create");
        for &t in &tokens {
            o.preserve_fd(id, t, Some(efd()), luo_core::Caller { uid })
                .expect("preserve");
        }
        want.push((name.to_owned(), uid, tokens));
    }
    let normal = o.create_session("left-behind", ROOT).expect("create");
    o.set_event(Event::Prepare as u32).expect("prepare");
    o.session_event(normal, Event::Cancel as u32, ROOT)
        .expect("cancel one session");
    let epoch = o.epoch();
    let data: Vec<Vec<u8>> = o
        .sessions()
        .flat_map(|s| s.files().iter().map(|f| f.data().to_vec()))
        .collect();

    let o: Orchestrator = live_update(o);
    assert_eq!(o.state(), State::Updated);
    assert_eq!(o.epoch(), epoch + 1);
    let got: Vec<_> = o
        .sessions()
        .map(|s| {
            assert_eq!(s.state(), State::Updated);
            assert!(s.incoming() && !s.retrieved());
            (
                s.name().to_owned(),
                s.owner(),
                s.files().iter().map(|f| f.token()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(got, want, "NORMAL sessions are not carried");
    let got_data: Vec<Vec<u8>> = o
        .sessions()
        .flat_map(|s| s.files().iter().map(|f| f.data().to_vec()))
        .collect();
    assert_eq!(got_data, data);
    assert_eq!(o.preserved_count(), 4);
}

/// The image a `luod-handover-v1` daemon writes for this state, kept as bytes in
/// `tests/data/`: if a later change stops reading it, an update from a daemon
/// that runs today would fail, and this test says so (SPEC §7.7).
fn golden_v1() -> Handover {
    Handover {
        epoch: 7,
        previous_exe: "/usr/sbin/luod".into(),
        sessions: vec![
            SessionImage {
                name: "vm-42".into(),
                owner: 107,
                files: vec![
                    FileImage {
                        token: 0x1A,
                        compatible: "memfd-v1".into(),
                        data: vec![9, 8, 7],
                        fd_index: 0,
                    },
                    FileImage {
                        token: u64::MAX,
                        compatible: "socket-v1".into(),
                        data: vec![],
                        fd_index: 1,
                    },
                ],
            },
            SessionImage {
                name: "empty".into(),
                owner: 0,
                files: vec![],
            },
        ],
    }
}

const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/handover-v1.bin");

#[test]
fn the_golden_v1_image_still_decodes() {
    let bytes = std::fs::read(GOLDEN_V1).expect("tests/data/handover-v1.bin");
    assert_eq!(Handover::decode(&bytes), Ok(golden_v1()));
}

/// Run once, by hand, when a format version is frozen:
/// `cargo test -p luo-core --test handover -- --ignored write_golden`.
#[test]
#[ignore = "writes test data"]
fn write_golden_v1_image() {
    std::fs::create_dir_all(std::path::Path::new(GOLDEN_V1).parent().expect("dir")).expect("mkdir");
    std::fs::write(GOLDEN_V1, golden_v1().encode()).expect("write");
}

/// An orchestrator in PREPARED whose session "s" holds `files` (token i: the
/// i-th), and the image and fds a live update of it would carry.
fn carried(
    files: Vec<std::os::fd::OwnedFd>,
) -> (Orchestrator, Handover, Vec<std::os::fd::OwnedFd>) {
    let mut o = Orchestrator::new(registry(), Limits::default());
    let id = o.create_session("s", ROOT).expect("create");
    for (i, fd) in files.into_iter().enumerate() {
        o.preserve_fd(id, i as u64, Some(fd), ROOT)
            .expect("preserve");
    }
    o.set_event(Event::Prepare as u32).expect("prepare");
    let _freeze = o.freeze_for_update().expect("freeze");
    let (image, fds) = o.handover("/proc/self/exe").expect("handover");
    let fds = fds
        .iter()
        .map(|fd| fd.try_clone_to_owned().expect("dup"))
        .collect();
    let image = Handover::decode(&image.encode()).expect("decode");
    (o, image, fds)
}

fn registry() -> luo_core::HandlerRegistry {
    luo_core::HandlerRegistry::with_builtin()
}

fn memfd() -> std::os::fd::OwnedFd {
    rustix::fs::memfd_create("ram", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd")
}

/// The per-fd checks of a resume are deferred until after the epoch serves;
/// anything that needs every file's identity settles them all first, so a
/// duplicate of a carried file is still refused with EBUSY.
#[test]
fn deferred_checks_still_refuse_a_duplicate_of_a_carried_file() {
    let mine = efd();
    let (old, image, fds) = carried(vec![mine.try_clone().expect("dup"), efd()]);
    drop(old);
    let mut o = Orchestrator::from_handover(&image, fds, registry(), Limits::default())
        .expect("from_handover");
    assert!(o.unsettled(), "nothing checked before the epoch serves");
    let t = o.create_session("t", ROOT).expect("create");
    let err = o
        .preserve_fd(t, 1, Some(mine), ROOT)
        .expect_err("a duplicate of a carried file");
    assert_eq!(err.errno(), luo_uapi::Errno::BUSY);
    assert!(
        !o.unsettled(),
        "PRESERVE_FD settled every carried file first"
    );
    o.preserve_fd(t, 2, Some(efd()), ROOT)
        .expect("a new file is fine");
}

/// `settle` checks at most its budget, in order, and says how many it did.
#[test]
fn settle_works_in_batches() {
    let (old, image, fds) = carried((0..5).map(|_| memfd()).collect());
    drop(old);
    let mut o = Orchestrator::from_handover(&image, fds, registry(), Limits::default())
        .expect("from_handover");
    assert_eq!(o.settle(2), 2);
    assert!(o.unsettled());
    assert_eq!(o.settle(2), 2);
    assert_eq!(o.settle(2), 1);
    assert!(!o.unsettled());
    assert_eq!(o.settle(2), 0);
    let keys: Vec<_> = o
        .sessions()
        .flat_map(|s| s.files().iter().map(|f| f.key()))
        .collect();
    assert!(keys.iter().all(Option::is_some), "{keys:?}");
}

/// A carried fd that is not what its data describes, or a file carried twice,
/// no longer stops the whole epoch: that file is refused, with the handler's
/// errno or EIO, on every RESTORE_FD, and the others restore.
#[test]
fn a_carried_file_that_fails_its_check_is_refused_alone() {
    let (old, image, mut fds) = carried(vec![memfd(), efd(), memfd(), memfd()]);
    drop(old);
    fds.swap(0, 1); // token 0 (memfd data) gets the eventfd and token 1 the memfd
    fds[3] = fds[2].try_clone().expect("dup"); // token 3 is token 2's file again
    let mut o = Orchestrator::from_handover(&image, fds, registry(), Limits::default())
        .expect("the image itself is fine");
    let id = o.retrieve_session("s", ROOT).expect("retrieve");
    for token in [0, 1] {
        let err = o.restore_fd(id, token, ROOT).expect_err("wrong kind");
        assert_eq!(err.errno(), luo_uapi::Errno::INVAL, "token {token}");
        let again = o.restore_fd(id, token, ROOT).expect_err("still refused");
        assert_eq!(again.errno(), luo_uapi::Errno::INVAL, "token {token}");
    }
    o.restore_fd(id, 2, ROOT).expect("token 2 restores");
    let err = o.restore_fd(id, 3, ROOT).expect_err("carried twice");
    assert_eq!(err.errno(), luo_uapi::Errno::IO);
}

/// Building from fds that arrive while it builds: each file gets the fd of
/// its index, an image that does not fit is refused before any fd is asked
/// for, and an fd that never comes is an error rather than a hole.
#[test]
fn an_epoch_builds_from_fds_as_they_arrive() {
    let (old, image, fds) = carried((0..6).map(|_| memfd()).collect());
    drop(old);
    let inodes: Vec<u64> = fds.iter().map(ino).collect();
    let view = image.view();

    let mut slots: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut asked = Vec::new();
    let o = Orchestrator::from_handover_view_arriving(
        &view,
        slots.len(),
        |i| {
            asked.push(i);
            slots.get_mut(i).and_then(Option::take)
        },
        registry(),
        Limits::default(),
    )
    .expect("built");
    assert_eq!(
        asked,
        (0..6).collect::<Vec<_>>(),
        "in index order, once each"
    );
    let built: Vec<u64> = o
        .sessions()
        .flat_map(|s| s.files())
        .map(|f| rustix::fs::fstat(f.fd()).expect("fstat").st_ino)
        .collect();
    assert_eq!(built, inodes);

    let mut called = false;
    let refused = Orchestrator::from_handover_view_arriving(
        &view,
        5,
        |_| {
            called = true;
            None
        },
        registry(),
        Limits::default(),
    );
    assert!(refused.is_err(), "5 fds for an image of 6 files");
    assert!(!called, "refused before taking any fd");

    let spare: Vec<std::os::fd::OwnedFd> = (0..3).map(|_| memfd()).collect();
    let mut spare = spare.into_iter();
    let short = Orchestrator::from_handover_view_arriving(
        &view,
        6,
        |_| spare.next(),
        registry(),
        Limits::default(),
    );
    let err = short.expect_err("the fourth fd never came");
    assert_eq!(err.errno(), luo_uapi::Errno::IO);
}
