#!/bin/busybox sh
# PID 1 of the KVM host booted by `cargo xtask kvm-host` (see mod.rs). Loads KVM and the
# virtio-fs chain, checks that KVM works, builds the root (the machine's own `/`, read-only,
# under a tmpfs overlay; the --share directories read-write at their own paths), runs the
# command in a chroot of it, and reports in the results share:
#   results/booted     written just before the command starts (the harness times the boot)
#   results/stdout     the command's stdout, results/stderr its stderr (followed live)
#   results/status     `exit N`, or `error WHY` when the KVM host cannot run it
#   results/processes  every process and its kernel stack, once results/dump-processes appears
# then powers off. Everything the harness generated per run is under /krunbox.
/bin/busybox mkdir -p /bin /results
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

report() {
    echo "$*" > /results/status.tmp && mv /results/status.tmp /results/status
    sync
    poweroff -f
}
fail() {
    # Also on the console: before the results share is mounted, only the console tells.
    echo "kvm-host: $*" > /dev/console
    report "error $*"
}

for module in /krunbox/modules/*.ko; do
    insmod "$module" || echo "kvm-host: insmod $module failed" > /dev/console
done
mount -t virtiofs results /results || fail "cannot mount the results share"

grep -qw svm /proc/cpuinfo || fail "the KVM host's CPU has no svm flag: QEMU is not emulating AMD SVM (it needs an AMD CPU model with +svm,+npt under TCG)"
grep -qw npt /proc/cpuinfo || fail "the KVM host's CPU has svm but no npt (nested paging): add +npt to QEMU's -cpu"
[ -d /sys/module/kvm_amd ] || fail "kvm-amd did not load: $(dmesg | grep -i -m1 -E 'kvm|svm')"
[ -c /dev/kvm ] || fail "/dev/kvm is missing although kvm-amd is loaded"

mkdir -p /lower /upper
mount -t virtiofs -o ro root /lower || fail "cannot mount the host's root (virtio-fs tag root)"
mount -t tmpfs -o mode=0755 upper /upper || fail "cannot mount the overlay's tmpfs"
mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work root /newroot \
    || fail "cannot mount the overlay root"
while read -r tag path; do
    mount -t virtiofs "$tag" "/newroot$path" || fail "cannot mount share $tag at $path"
done < /krunbox/shares
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
ln -sf pts/ptmx /newroot/dev/ptmx
# Fresh, so nothing of the machine's own runtime state (its VMs' run directories, locks)
# shows through the overlay.
for dir in /dev/shm /tmp /run /var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs "/newroot$dir" || fail "cannot mount a tmpfs on $dir"
done
ip link set lo up || fail "cannot bring lo up"
cp /krunbox/command.sh /newroot/run/kvm-host-command.sh

# When the harness gives up on a command (its --timeout), it asks for the KVM host's processes
# by creating results/dump-processes; their states and kernel stacks show where it hangs.
(
    while [ ! -e /results/dump-processes ]; do sleep 1; done
    for proc in /proc/[0-9]*; do
        # Kernel threads have no command line.
        [ -s "$proc/cmdline" ] || continue
        # The command line last and bounded: reading it waits for the process's memory lock.
        echo "$(cut -d' ' -f1-5 "$proc/stat") wchan=$(cat "$proc/wchan" 2>/dev/null): $(timeout 2 cat "$proc/cmdline" 2>/dev/null | tr '\0' ' ' | cut -c1-160)"
        sed 's/^/    /' "$proc/stack" 2>/dev/null | head -8
    done > /results/processes.tmp 2>&1
    mv /results/processes.tmp /results/processes
) &
: > /results/booted
env -i /bin/chroot /newroot /bin/sh /run/kvm-host-command.sh \
    < /dev/null > /results/stdout 2> /results/stderr
report "exit $?"
