//! A disk of arbitrary bytes: reading both GPT copies never panics; when a copy validates,
//! slots, GRUB's rule and every write operation work, and `repair` leaves two valid, identical
//! copies with the backup at the end and GRUB's answer unchanged.
#![no_main]
use bootctl::storage::MemDisk;
use bootctl::{SlotDisk, SlotId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the logical sector size the "device" reports.
    let Some((&pick, image)) = data.split_first() else { return };
    let sector_size = if pick & 1 == 0 { 512 } else { 4096 };
    let mut bytes = image.to_vec();
    bytes.truncate(bytes.len() / 512 * 512);
    let Ok(mut disk) = SlotDisk::from_storage(MemDisk::new(bytes, sector_size), None) else { return };
    let _ = disk.slots();
    let before = disk.select(false).ok().flatten().map(|s| s.slot.number);
    for op in 0..4 {
        let mut d = SlotDisk::from_storage(disk.storage_mut().clone(), None).expect("re-reading what was just read");
        let _ = match op {
            0 => d.set_next(&SlotId::B, 1).map(|_| ()),
            1 => d.mark_good(&SlotId::A).map(|_| ()),
            2 => d.mark_bad(&SlotId::B).map(|_| ()),
            _ => d.select(true).map(|_| ()),
        };
        let s = d.state();
        assert!(s.primary.is_ok() || s.backup.is_ok());
    }
    if disk.repair().is_ok() {
        let s = disk.state();
        assert!(s.primary.is_ok() && s.backup.is_ok() && s.copies_match && s.backup_at_end(), "{s:?}");
        assert_eq!(disk.select(false).ok().flatten().map(|s| s.slot.number), before);
    }
});
