//! Format 2 payloads (content-defined chunks) through `updater install`: they install like
//! format 1 ones (streamed, verified, read back) and resume after an interruption; format 1
//! payloads keep installing (the other suites use them).
use crate::util::{self, Device};
use bootctl::SlotId;
use updater::payload::cdc::CdcParams;
use updater::payload::writer::PayloadParts;

/// Chunks of 1 to 16 KiB (average 4 KiB), so a test image of a few hundred KiB has dozens.
const SMALL: CdcParams = CdcParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

pub(crate) fn v2_parts(image: &[u8], version: &str) -> PayloadParts {
    PayloadParts::from_image_v2(image, &util::opts("testbox", version), SMALL).unwrap()
}

#[test]
fn a_format_2_payload_installs_and_flips_the_passive_slot() {
    let dev = Device::new();
    let a_before = dev.slot_bytes(&SlotId::A);
    let image = util::image_bytes(300_000, 5);
    let p = dev.payload("p", &v2_parts(&image, "2.0").assemble(&[util::test_key()]));
    let out = util::ok(dev.updater(&["install", p.to_str().unwrap()]));
    assert!(out.contains("2.0"), "{out}");
    assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
    assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
}

#[test]
fn a_booted_slot_sharing_no_chunk_with_the_payload_is_probed_not_indexed_whole() {
    let image = util::image_bytes(300_000, 5);
    let bytes = v2_parts(&image, "2.0").assemble(&[util::test_key()]);
    let probed = |old: &[u8]| {
        let dev = booted_with(old);
        let p = dev.payload("p", &bytes);
        let out = dev.updater(&["install", p.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(dev.slot_bytes(&SlotId::B)[..image.len()], image[..]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.contains("slot USR-A: its first")
    };
    // Another image entirely (noise throughout): the probe finds nothing and the slot is read
    // no further.
    let slot_len = Device::new().slot(&SlotId::A).byte_len() as usize;
    let mut x = 99u32;
    let other: Vec<u8> = (0..slot_len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    assert!(probed(&other));
    // The previous release: indexed whole.
    let mut old = image.clone();
    old[100_000..100_050].fill(0xaa);
    assert!(!probed(&old));
}

#[test]
fn a_format_2_payload_with_a_damaged_frame_is_refused_and_the_slot_stays_unbootable() {
    let dev = Device::new();
    let image = util::image_bytes(300_000, 6);
    let mut bytes = v2_parts(&image, "2.0").assemble(&[util::test_key()]);
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    let p = dev.payload("p", &bytes);
    let out = dev.updater(&["install", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad zstd frame") || err.contains("SHA-256 mismatch"),
        "{err}"
    );
    assert!(!dev.slot(&SlotId::B).attrs.is_bootable());
}

// Delta installs over HTTP: the booted slot holds the previous image, the device fetches the
// frames of the chunks it lacks by range.

use crate::agent::Nginx;
use crate::netfaults::{run_install, Fault, FaultServer};
use updater::install::delta::{self, LocalIndex};
use updater::install::InstallReport;
use updater::payload::{ChunkEntry, TrustedKeys};

/// An old image and a new one that differs from it in three places far apart (an overwrite;
/// 40 KB of new bytes, inserted, so everything after them shifts; another overwrite): about 7%
/// of its bytes, like a security update.
fn pair() -> (Vec<u8>, Vec<u8>) {
    let old = util::image_bytes(600_000, 7);
    let mut new = old.clone();
    new[100_000..103_000].fill(0x5a);
    new.splice(300_000..300_000, util::image_bytes(40_000, 11));
    new[500_000..502_000].fill(0xa5);
    (old, new)
}

/// A device booted from slot A holding `old`.
pub(crate) fn booted_with(old: &[u8]) -> Device {
    let dev = Device::new();
    util::write_at(&dev.disk(), dev.slot(&SlotId::A).byte_offset(), old);
    dev
}

fn v2_payload(image: &[u8], version: &str) -> Vec<u8> {
    v2_parts(image, version).assemble(&[util::test_key()])
}

/// The chunk table of a payload.
fn entries(payload: &[u8]) -> Vec<ChunkEntry> {
    let keys = TrustedKeys::new([util::test_key().verifying_key()]);
    updater::payload::read_prelude(&mut &payload[..], &keys)
        .unwrap()
        .chunks
        .entries
}

/// Nginx serving `payload` as `/p`, with the directory it serves.
fn nginx_with(payload: &[u8]) -> (Nginx, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p"), payload).unwrap();
    (Nginx::serve(dir.path()), dir)
}

/// `updater --json install SOURCE`: its result line, after checking the phases.
pub(crate) fn json_install(dev: &Device, source: &str) -> serde_json::Value {
    let stdout = util::ok(dev.updater(&["--json", "install", source]));
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] != "progress")
        .map(|l| format!("{} {}", l["event"], l["phase"]))
        .collect();
    let result = lines.last().unwrap().clone();
    if result["delta"] == true {
        let delta = lines.iter().find(|l| l["event"] == "delta").unwrap();
        assert_eq!(
            delta["reuse_bytes"], result["bytes_reused"],
            "the plan's reuse is what was copied"
        );
        assert_eq!(
            events,
            [
                r#""phase" "verified""#,
                r#""phase" "indexing""#,
                r#""delta" null"#,
                r#""phase" "writing""#,
                r#""phase" "reading back""#,
                r#""phase" "flipped""#,
                r#""result" null"#
            ]
        );
    }
    result
}

pub(crate) fn assert_installed(dev: &Device, image: &[u8]) {
    assert!(dev.slot_bytes(&SlotId::B)[..image.len()] == image[..]);
    assert_eq!(dev.slot(&SlotId::B).attrs.tries, 1);
}

#[test]
fn a_delta_install_over_http_fetches_a_small_share_of_the_payload_and_reuses_the_rest() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let a_before = dev.slot_bytes(&SlotId::A);
    let payload = v2_payload(&new, "2.0");
    let (nginx, _dir) = nginx_with(&payload);
    let report = json_install(&dev, &nginx.url("p"));
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    let reused = report["bytes_reused"].as_u64().unwrap();
    eprintln!(
        "delta pair: payload {} bytes, fetched {fetched}, reused {reused} of {}",
        payload.len(),
        new.len()
    );
    assert_eq!(report["delta"], true, "{report}");
    assert!(fetched * 5 < payload.len() as u64, "{report}");
    assert!(reused * 5 > new.len() as u64 * 4, "{report}");
    assert_eq!(report["damaged_local_chunks"], 0);
    assert!(nginx.requests().contains(" 206 "), "{}", nginx.requests());
    assert_installed(&dev, &new);
    assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
}

#[test]
fn a_delta_install_makes_the_server_send_little_more_than_the_device_fetched() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let (nginx, _dir) = nginx_with(&payload);
    let report = json_install(&dev, &nginx.url("p"));
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    // Body bytes nginx sent ("combined" log: `"GET …" STATUS BYTES "…"`), patch lookup aside.
    let sent: u64 = access_log(&nginx)
        .iter()
        .map(|l| {
            let after = l.split('"').nth(2).unwrap();
            after
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    eprintln!(
        "payload {} bytes, fetched {fetched}, nginx sent {sent}",
        payload.len()
    );
    // The first request asks for the largest signed part, the next for the chunk table; an
    // open-ended one would have sent the whole payload.
    assert!(payload.len() as u64 > fetched + 65536, "{report}");
    assert!(
        sent <= fetched + updater::install::FIRST_REQUEST + 4096,
        "nginx sent {sent} bytes for {fetched} fetched"
    );
}

#[test]
fn a_damaged_chunk_of_the_booted_slot_is_fetched_instead() {
    let (old, new) = pair();
    let payload = v2_payload(&new, "2.0");
    let (nginx, _dir) = nginx_with(&payload);
    let run = |damage: bool| -> InstallReport {
        let dev = booted_with(&old);
        if damage {
            let a = dev.slot(&SlotId::A).byte_offset();
            util::write_at(&dev.disk(), a + 200_000, &[!old[200_000]]);
        }
        let report = run_install(&dev, &nginx.url("p"), 3).unwrap();
        assert_installed(&dev, &new);
        report
    };
    let clean = run(false);
    let damaged = run(true);
    assert!(damaged.delta, "{damaged:?}");
    // The chunk holding the damaged byte, and only it, is fetched rather than copied.
    let e = entries(&payload);
    let chunk = e
        .iter()
        .find(|c| c.image_offset <= 200_000 && 200_000 < c.image_offset + u64::from(c.image_len))
        .unwrap();
    assert_eq!(
        clean.bytes_reused - damaged.bytes_reused,
        u64::from(chunk.image_len)
    );
    assert!(damaged.bytes_fetched >= clean.bytes_fetched + u64::from(chunk.frame_len));
}

#[test]
fn a_server_that_ignores_range_gets_the_payload_downloaded_whole() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let server = FaultServer::start(
        payload.clone(),
        Vec::new(),
        vec![Fault::IgnoreRange { at: usize::MAX }; 8],
    );
    let report = run_install(&dev, &server.url(), 1).unwrap();
    assert!(report.ranges_ignored, "{report:?}");
    assert!(report.bytes_fetched >= payload.len() as u64, "{report:?}");
    assert_installed(&dev, &new);
}

#[test]
fn a_v1_payload_installs_over_http_by_streaming_it_whole() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = util::parts(&new, "2.0").assemble(&[util::test_key()]);
    let (nginx, _dir) = nginx_with(&payload);
    let report = run_install(&dev, &nginx.url("p"), 3).unwrap();
    assert!(!report.delta, "{report:?}");
    assert_eq!(
        (report.bytes_fetched, report.bytes_reused),
        (payload.len() as u64, 0)
    );
    assert_installed(&dev, &new);
}

/// The ranges a device booted with `dev`'s slot A fetches for `payload`.
fn planned_ranges(dev: &Device, payload: &[u8]) -> Vec<std::ops::Range<u64>> {
    let a = dev.slot_bytes(&SlotId::A);
    let index = LocalIndex::build(&a[..], a.len() as u64, SMALL).unwrap();
    let p = delta::plan(&entries(payload), 0, &index);
    assert!(!p.full_download && p.ranges.len() >= 3, "{p:?}");
    p.ranges
}

#[test]
fn a_delta_install_cut_off_mid_range_resumes_without_fetching_any_chunk_already_written() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let ranges = planned_ranges(&dev, &payload);
    // The prelude, then the request for every range (this server answers it with one part
    // from the first range to the end) breaks off in the last frame of the second range,
    // after chunks written since the last checkpoint (every 16 KiB).
    let cut = ranges[1].end - 10;
    let faults = vec![Fault::Serve, Fault::Drop { at: cut as usize }];
    let server = FaultServer::start(payload.clone(), Vec::new(), faults);
    run_install(&dev, &server.url(), 1).unwrap_err();
    let first_run = server.starts().len();
    let b = dev.slot_bytes(&SlotId::B);
    let written = |c: &ChunkEntry| {
        let at = c.image_offset as usize;
        b[at..at + c.image_len as usize] == new[at..at + c.image_len as usize]
    };
    let table = entries(&payload);

    let report = run_install(&dev, &server.url(), 1).unwrap();
    // Chunks written after the last checkpoint are found in place rather than fetched again.
    let resumed = report.resumed_from_chunk as usize;
    assert!(
        resumed > 0 && table[resumed..].iter().any(written),
        "{report:?}"
    );
    assert!(report.bytes_in_place > 0, "{report:?}");
    let starts = server.starts()[first_run..].to_vec();
    assert_eq!(starts[0], 0, "the rerun reads the prelude first");
    for s in &starts[1..] {
        let c = table.iter().find(|c| c.payload_offset == *s).unwrap();
        assert!(
            !written(c),
            "re-fetched the frame at {s}, already written: {starts:?}"
        );
    }
    assert_installed(&dev, &new);
}

#[test]
fn a_payload_replaced_mid_delta_is_detected_and_the_new_one_installs_from_the_start() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let mut newer = new.clone();
    newer[400_000..401_000].fill(0x11);
    let other = v2_payload(&newer, "3.0");
    let ranges = planned_ranges(&dev, &payload);
    let cut = (ranges[0].start + ranges[0].end) / 2;
    let faults = vec![Fault::Serve, Fault::Swap { at: cut as usize }];
    let server = FaultServer::start(payload, other, faults);
    let report = run_install(&dev, &server.url(), 3).unwrap();
    assert_eq!(
        (report.version.as_str(), report.resumed_from_chunk),
        ("3.0", 0)
    );
    assert!(report.delta, "{report:?}");
    assert_installed(&dev, &newer);
}

#[test]
fn a_delta_install_from_a_file_reads_only_the_frames_it_lacks() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let p = dev.payload("p", &payload);
    let report = json_install(&dev, p.to_str().unwrap());
    assert_eq!(report["delta"], true, "{report}");
    assert!(
        report["bytes_fetched"].as_u64().unwrap() * 5 < payload.len() as u64,
        "{report}"
    );
    assert_installed(&dev, &new);
}

#[test]
fn a_delta_install_survives_a_crash_at_every_write_and_flush() {
    // 160 KB with 8 KB inserted in the middle: chunks copied, fetched and checkpointed.
    let old = util::image_bytes(160_000, 7);
    let mut new = old.clone();
    new.splice(80_000..80_000, util::image_bytes(8_000, 11));
    let payload = v2_payload(&new, "2.0");
    let n = crate::crashpoints::sweep(
        "delta install",
        "A",
        &new,
        |dev| {
            vec![
                "install".into(),
                "--checkpoint-bytes".into(),
                "16384".into(),
                dev.path("p").to_str().unwrap().to_string(),
            ]
        },
        |dev| {
            util::write_at(&dev.disk(), dev.slot(&SlotId::A).byte_offset(), &old);
            dev.payload("p", &payload);
        },
        |dev| assert_installed(dev, &new),
        |_, _| {},
    );
    assert!(n > 20, "{n} crash points");
    // The install swept is a delta one.
    let dev = booted_with(&old);
    let p = dev.payload("p", &payload);
    let report = json_install(&dev, p.to_str().unwrap());
    assert_eq!(report["delta"], true, "{report}");
    assert!(
        report["bytes_reused"].as_u64().unwrap() > 100_000,
        "{report}"
    );
}

#[test]
fn without_json_a_delta_install_prints_what_it_fetched_and_reused() {
    let (old, new) = pair();
    let dev = booted_with(&old);
    let p = dev.payload("p", &v2_payload(&new, "2.0"));
    let out = util::ok(dev.updater(&["install", p.to_str().unwrap()]));
    let second = out.lines().nth(1).unwrap_or_default();
    assert!(
        second.starts_with("by delta: fetched ") && second.ends_with(" bytes of the booted slot"),
        "{out}"
    );
}

// Several ranges per request (issue 12): multipart/byteranges from nginx, the fallbacks when a
// server answers otherwise, and the target slot as a source.

use crate::rangeserver::{Multi, RangeServer};

/// An old image and a new one with ten small changes 55 KB apart: ten ranges to fetch.
fn scattered_pair() -> (Vec<u8>, Vec<u8>) {
    let old = util::image_bytes(600_000, 7);
    let mut new = old.clone();
    for i in 0..10 {
        let at = 20_000 + i * 55_000;
        new[at..at + 1500].fill(0x40 + i as u8);
    }
    (old, new)
}

/// A device booted with the old image of [`scattered_pair`], the new image, its payload, and
/// the ranges the device plans to fetch.
fn scattered_setup() -> (Device, Vec<u8>, Vec<u8>, Vec<std::ops::Range<u64>>) {
    let (old, new) = scattered_pair();
    let dev = booted_with(&old);
    let payload = v2_payload(&new, "2.0");
    let ranges = planned_ranges(&dev, &payload);
    (dev, new, payload, ranges)
}

/// Requests for a payload's prelude: the signed part, then the chunk table
/// (`updater::install::FIRST_REQUEST`).
const PRELUDE_REQUESTS: usize = 2;

/// The request lines of nginx's access log, less the lookup of a publish-time patch (none is
/// published in these tests; `tests/patch.rs` covers them).
fn access_log(nginx: &Nginx) -> Vec<String> {
    nginx
        .requests()
        .lines()
        .filter(|l| !l.contains(".patch "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_delta_from_nginx_asks_for_many_ranges_in_one_request() {
    let (dev, new, payload, ranges) = scattered_setup();
    assert!(ranges.len() >= 8, "{ranges:?}");
    let (nginx, _dir) = nginx_with(&payload);
    let report = json_install(&dev, &nginx.url("p"));
    assert_eq!(report["delta"], true, "{report}");
    let log = access_log(&nginx);
    // The prelude, then every range in one request, answered by one 206 multipart response.
    assert_eq!(log.len(), PRELUDE_REQUESTS + 1, "{log:#?}");
    assert!(log[PRELUDE_REQUESTS].contains("\" 206 "), "{log:#?}");
    let fetched = report["bytes_fetched"].as_u64().unwrap();
    eprintln!(
        "scattered pair: {} ranges in {} requests after the prelude, fetched {fetched} of a {}-byte payload",
        ranges.len(),
        log.len() - 1,
        payload.len()
    );
    assert!(fetched * 5 < payload.len() as u64, "{report}");
    assert_installed(&dev, &new);
}

#[test]
fn a_server_without_multi_range_support_gets_one_range_per_request_and_the_same_bytes() {
    let (old, new) = scattered_pair();
    let payload = v2_payload(&new, "2.0");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p"), &payload).unwrap();
    let install_from = |nginx: &Nginx| {
        let dev = booted_with(&old);
        let report = json_install(&dev, &nginx.url("p"));
        assert_installed(&dev, &new);
        (report, planned_ranges(&dev, &payload).len())
    };
    let multi = Nginx::serve(dir.path());
    let (with_multi, _) = install_from(&multi);
    // nginx with `max_ranges 1` answers a request for several ranges with the whole file.
    let single = Nginx::serve_with(dir.path(), "max_ranges 1;");
    let (without, ranges) = install_from(&single);
    let log = access_log(&single);
    // The prelude, the multi-range request answered 200 (dropped unread), then one request
    // per range.
    assert_eq!(log.len(), PRELUDE_REQUESTS + 1 + ranges, "{log:#?}");
    assert!(log[PRELUDE_REQUESTS].contains("\" 200 "), "{log:#?}");
    assert!(
        log[PRELUDE_REQUESTS + 1..]
            .iter()
            .all(|l| l.contains("\" 206 ")),
        "{log:#?}"
    );
    assert_eq!(without["delta"], true, "{without}");
    assert_eq!(without["ranges_ignored"], false, "{without}");
    assert_eq!(
        without["bytes_fetched"], with_multi["bytes_fetched"],
        "the same frames either way"
    );
}

#[test]
fn a_200_to_a_multi_range_request_is_remembered_and_later_requests_ask_one_range_each() {
    let (dev, new, payload, ranges) = scattered_setup();
    let server = RangeServer::start(payload.clone(), Vec::new(), Multi::Whole);
    let report = run_install(&dev, &server.url(), 1).unwrap();
    assert!(report.delta && !report.ranges_ignored, "{report:?}");
    assert!(
        report.bytes_fetched * 5 < payload.len() as u64,
        "{report:?}"
    );
    let reqs = server.requests();
    // The prelude, one multi-range request answered 200, then one range per request.
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    let mut want = vec![206; PRELUDE_REQUESTS];
    want.push(200);
    want.extend(std::iter::repeat_n(206, ranges.len()));
    assert_eq!(statuses, want, "{reqs:?}");
    assert!(
        reqs[PRELUDE_REQUESTS + 1..]
            .iter()
            .all(|r| !r.range.contains(',')),
        "{reqs:?}"
    );
    assert_installed(&dev, &new);
}

#[test]
fn a_server_that_coalesces_the_ranges_into_one_part_is_read_as_one_range() {
    let (dev, new, payload, ranges) = scattered_setup();
    let server = RangeServer::start(payload.clone(), Vec::new(), Multi::Coalesce);
    let report = run_install(&dev, &server.url(), 1).unwrap();
    assert!(report.delta && !report.ranges_ignored, "{report:?}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), PRELUDE_REQUESTS + 1, "{reqs:?}");
    assert_eq!(
        reqs[PRELUDE_REQUESTS].range.matches(',').count() + 1,
        ranges.len()
    );
    assert_installed(&dev, &new);
}

#[test]
fn a_multipart_answer_with_a_part_not_asked_for_is_refused_and_the_slot_never_flips() {
    let (dev, _, payload, ranges) = scattered_setup();
    let a_before = dev.slot_bytes(&SlotId::A);
    let server = RangeServer::start(payload, Vec::new(), Multi::WrongSecondPart);
    let out = dev.updater(&["install", &server.url()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let (s, e) = (ranges[1].start, ranges[1].end);
    let want = format!(
        "multipart answer: part 2 is bytes {}-{e}, expected a part starting at {s} and ending at the end of an asked range (next asked: bytes {s}-{})",
        s + 1,
        e - 1
    );
    // One line says why (the others are the log's info lines).
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("updater: info: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].starts_with(&format!("updater: installing {} into ", server.url()))
            && errors[0].contains(&format!(
                ": reading payload {} at offset {s}: ",
                server.url()
            ))
            && errors[0].ends_with(&want),
        "{err}"
    );
    assert!(!dev.slot(&SlotId::B).attrs.is_bootable());
    assert_eq!(dev.slot_bytes(&SlotId::A), a_before);
}

#[test]
fn a_connection_cut_mid_multipart_asks_again_for_the_ranges_not_yet_read() {
    let (dev, new, payload, ranges) = scattered_setup();
    // Cut in the fourth range's bytes.
    let cut = (ranges[..3].iter().map(|r| r.end - r.start).sum::<u64>() + 400) as usize + 300;
    let server = RangeServer::start(payload, vec![Multi::CutAfter(cut)], Multi::Parts);
    let report = run_install(&dev, &server.url(), 3).unwrap();
    assert!(report.delta && report.retries >= 1, "{report:?}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), PRELUDE_REQUESTS + 2, "{reqs:?}");
    let first_start = |r: &str| -> u64 {
        r.trim_start_matches("bytes=")
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The retry starts where the cut left off, past the ranges already read, and asks for
    // the rest of them only.
    let (first, retry) = (&reqs[PRELUDE_REQUESTS], &reqs[PRELUDE_REQUESTS + 1]);
    let again = first_start(&retry.range);
    assert!(again > ranges[2].end && again < ranges[4].start, "{reqs:?}");
    let count = |r: &str| r.matches(',').count() + 1;
    assert_eq!(count(&retry.range) + 3, count(&first.range), "{reqs:?}");
    assert_installed(&dev, &new);
}

#[test]
fn a_target_slot_holding_an_older_release_supplies_chunks_the_booted_slot_lacks() {
    // The booted slot runs a release without the block `extra`; the target slot still holds
    // an older one with it at 300 000; the new release has it at 200 000.
    let base = util::image_bytes(600_000, 7);
    // 80 KB of incompressible bytes: the random halves of a test image.
    let extra: Vec<u8> = util::image_bytes(160_000, 11)
        .chunks(4096)
        .skip(1)
        .step_by(2)
        .flatten()
        .copied()
        .collect();
    let with_extra_at = |at: usize| [&base[..at], &extra[..], &base[at..]].concat();
    let older = with_extra_at(300_000);
    let mut booted = base.clone();
    booted[500_000..502_000].fill(0xa5);
    let new = with_extra_at(200_000);
    let payload = v2_payload(&new, "3.0");
    let (nginx, _dir) = nginx_with(&payload);
    let install = |target: Option<&[u8]>| {
        let dev = booted_with(&booted);
        if let Some(t) = target {
            util::write_at(&dev.disk(), dev.slot(&SlotId::B).byte_offset(), t);
        }
        let report = json_install(&dev, &nginx.url("p"));
        assert_installed(&dev, &new);
        report
    };
    let with_older = install(Some(&older));
    let empty = install(None);
    let from_target = with_older["bytes_reused_from_target"].as_u64().unwrap();
    assert_eq!(empty["bytes_reused_from_target"], 0, "{empty}");
    let fetched = |r: &serde_json::Value| r["bytes_fetched"].as_u64().unwrap();
    eprintln!(
        "older release in the target slot: fetched {} bytes, {from_target} bytes copied from the target slot; with an empty target slot: fetched {}",
        fetched(&with_older),
        fetched(&empty)
    );
    assert!(
        from_target >= 40_000 && fetched(&with_older) + 40_000 < fetched(&empty),
        "{with_older} {empty}"
    );
}

#[test]
fn a_payload_replaced_before_a_multi_range_request_restarts_the_install_with_the_new_one() {
    let (dev, new, payload, _) = scattered_setup();
    let mut newer = new.clone();
    newer[400_000..401_000].fill(0x11);
    let other = v2_payload(&newer, "3.0");
    // The multi-range request carries If-Range with the first payload's ETag; the server has
    // the other one by then and answers 200 with it.
    let server = RangeServer::with_other(payload, other, vec![Multi::SwapThenParts], Multi::Parts);
    let report = run_install(&dev, &server.url(), 1).unwrap();
    assert_eq!(
        (report.version.as_str(), report.resumed_from_chunk),
        ("3.0", 0)
    );
    let reqs = server.requests();
    assert_eq!(reqs[PRELUDE_REQUESTS].status, 200, "{reqs:?}");
    assert_eq!(
        reqs[PRELUDE_REQUESTS + 1].range,
        format!("bytes=0-{}", updater::install::FIRST_REQUEST - 1),
        "started over: {reqs:?}"
    );
    assert_installed(&dev, &newer);
}
