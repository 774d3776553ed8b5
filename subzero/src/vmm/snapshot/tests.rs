use super::*;
use proptest::prelude::*;

fn path() -> &'static Path {
    Path::new("vm.snap")
}

#[test]
fn a_framed_payload_decodes_to_itself() {
    let payload = br#"{"hello":"world"}"#;
    let file = encode(payload);
    assert_eq!(file.len(), HEADER_LEN + payload.len());
    assert_eq!(decode(&file, path()).unwrap(), payload);
}

#[test]
fn each_kind_of_damage_gets_its_own_message() {
    let file = encode(b"payload");
    let msg = |data: &[u8]| decode(data, path()).unwrap_err().to_string();
    assert!(msg(b"").contains("truncated"), "{}", msg(b""));
    assert!(msg(&file[..10]).contains("shorter than the 24-byte header"));
    assert!(msg(b"#!/bin/sh\necho hello world\n").contains("not a Subzero snapshot"));
    let mut v2 = file.clone();
    v2[8] = 2;
    assert!(msg(&v2).contains("format version 2; this Subzero reads version 1"));
    assert!(msg(&file[..file.len() - 1]).contains("promises 7 bytes of state, the file has 6"));
    let mut flipped = file.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(msg(&flipped).contains("checksum does not match"));
}

#[test]
fn a_payload_that_is_not_a_snapshot_is_refused_with_the_path() {
    let file = encode(br#"{"vmm_version":"0.1.0"}"#);
    let Err(err) = parse(&file, path()) else {
        panic!("a payload without the snapshot's fields decoded")
    };
    let err = err.to_string();
    assert!(
        err.starts_with("vm.snap does not decode: missing field"),
        "{err}"
    );
}

proptest! {
    #[test]
    fn truncation_is_always_refused(payload in proptest::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
        let file = encode(&payload);
        let len = cut.index(file.len());
        prop_assert!(decode(&file[..len], path()).is_err());
    }

    #[test]
    fn any_flipped_byte_is_refused(payload in proptest::collection::vec(any::<u8>(), 1..256), at in any::<prop::sample::Index>(), bits in 1u8..=255) {
        let mut file = encode(&payload);
        let i = at.index(file.len());
        file[i] ^= bits;
        prop_assert!(decode(&file, path()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&data, path());
    }
}

#[test]
fn the_memory_file_is_guest_ram_with_holes_for_zero_pages() {
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 3 << 20),
        (GuestAddress(16 << 20), 2 << 20),
    ])
    .unwrap();
    mem.write_slice(&[0xab; 10], GuestAddress(5)).unwrap();
    mem.write_slice(&[0xcd; 9000], GuestAddress((1 << 20) - 4096))
        .unwrap();
    mem.write_slice(&[0xef; 1], GuestAddress((18 << 20) - 1))
        .unwrap();
    let path = std::env::temp_dir().join(format!("subzero-memfile-{}", std::process::id()));
    let mut file = create_file(&path, true).unwrap();
    write_memory(&mem, &mut file).unwrap();
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data.len(), 5 << 20);
    let mut expected = vec![0u8; 5 << 20];
    expected[5..15].fill(0xab);
    expected[(1 << 20) - 4096..(1 << 20) - 4096 + 9000].fill(0xcd);
    expected[(5 << 20) - 1] = 0xef;
    assert!(data == expected, "the file differs from guest RAM");
    let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        allocated < 1 << 20,
        "{allocated} bytes allocated for 5 pages of data"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn zero_pages_are_told_from_pages_with_one_byte_set() {
    assert!(is_zero(&[0u8; 4096]));
    assert!(is_zero(&[]));
    for at in [0, 15, 16, 4095, 4096] {
        let mut page = vec![0u8; 4097];
        page[at] = 1;
        assert!(!is_zero(&page), "byte {at}");
    }
}
