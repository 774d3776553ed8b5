//! Host-KVM: the counter guest is paused, snapshotted and restored in a new
//! VM, and counts on from where it stopped.

mod common;

use common::{counts, kvm_available, scratch, wait_for, Console};
use subzero::vmm::builder::restore_vm;
use subzero::vmm::resources::{BootSource, MachineConfig, VmResources};
use subzero::vmm::{build_linux, snapshot};

const MEMORY: u64 = 32 << 20;

#[test]
fn a_restored_counter_goes_on_from_where_it_paused() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snapshot");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, subzero::demo::COUNTER_ELF).unwrap();
    let resources = VmResources {
        boot_source: Some(BootSource {
            kernel_image_path: kernel,
            boot_args: None,
            initrd_path: None,
        }),
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: MEMORY >> 20,
            ..MachineConfig::default()
        },
        ..VmResources::default()
    };
    let cfg = resources.vm_config().expect("a valid configuration");
    let console = Console::default();
    let machine = build_linux(&cfg, Box::new(console.clone())).expect("build");
    let stats = machine.new_stats();
    let mut vm = machine.start(stats, None, false).expect("start");
    assert!(
        wait_for(30, || counts(&console.text()).len() >= 3),
        "the counter did not print 3 lines: {:?}",
        console.text()
    );
    vm.pause().expect("pause");
    assert!(vm.is_paused());
    let at_pause = console.text();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(console.text(), at_pause, "a paused guest printed");
    let last = *counts(&at_pause).last().unwrap();

    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    snapshot::create(&mut vm, &resources, &state, &mem, false).expect("snapshot");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), MEMORY);
    let again = snapshot::create(&mut vm, &resources, &state, &mem, false)
        .expect_err("an existing snapshot is not overwritten");
    assert!(again.to_string().contains("already exists"), "{again}");
    vm.finish();

    let (snap, file) = snapshot::read(&state, &mem).expect("read the snapshot");
    let console2 = Console::default();
    let machine = restore_vm(snap, &file, Box::new(console2.clone())).expect("restore");
    let stats = machine.new_stats();
    let mut vm = machine.start(stats, None, true).expect("start paused");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        console2.text(),
        "",
        "a restored VM ran before it was resumed"
    );
    vm.resume().expect("resume");
    assert!(
        wait_for(30, || counts(&console2.text()).len() >= 2),
        "the restored counter did not print: {:?}",
        console2.text()
    );
    // The pause may split a line: the restored guest finishes it.
    let joined = counts(&(at_pause.clone() + &console2.text()));
    let expected: Vec<u64> = (1..=joined.len() as u64).collect();
    assert_eq!(
        joined, expected,
        "paused after {last}; the output before and after the restore must count on"
    );
    assert!(joined.len() as u64 >= last + 2, "{joined:?}");
    vm.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
