# shellcheck shell=bash
# Helpers for shell tests that need a real libvirtd and real QEMU domains.
# Source it after lib.sh (which provides $T, cleanup_hooks and set -eu):
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/lib-libvirt.sh"
#   nj_require_libvirt
#   dom=$(nj_unique_name inc)
#   nj_domain_create "$dom" vda:qcow2:64M vdb:raw:32M sda:raw:1M:cdrom
#   nj_guest_write "$dom" vda 0xab 1M 64k
#   nj_guest_zero "$dom" vda 1M 4k
#   nj_guest_discard "$dom" vdb 0 1M
#   cmp "$(nj_shadow_path "$dom" vda)" restored.raw
#
# Domains have no guest OS: they are started paused and every guest write
# is issued through QEMU's block layer with the HMP command qemu-io, so
# dirty bitmaps see it exactly like a write by a guest.  Each write is
# repeated on a shadow raw file with dd (an independent truth) and, unless
# NJ_GUEST_VERIFY=0, read back from the live image with qemu-io -U.
#
# Environment (all optional):
#   NJ_LIBVIRT_URI   connection URI (default qemu:///system)
#   NJ_VIRT_TYPE     force the domain type, "kvm" or "qemu" (TCG)
#   NJ_DOMAIN_START  how nj_domain_create leaves the domain: "paused"
#                    (default), "running", or "no" (defined, shut off)
#   NJ_GUEST_VERIFY  0 skips reading each guest write back from the image
#   NJ_DOMAIN_UUID   the <uuid> nj_domain_create gives the domain
#   NJ_DOMAIN_DEVICES  XML that nj_domain_create adds to <devices>
#   NJ_DOMAIN_OS       XML that nj_domain_create adds to <os> (a <kernel>)
#   NJ_DOMAIN_MEMORY   MiB of memory (default 128)
#   NJ_DOMAIN_CONSOLE  a file that receives the serial console (default none)
#
# See docs/libvirt-notes.md for what libvirt 9.0 does with such domains.

NJ_LIBVIRT_URI=${NJ_LIBVIRT_URI:-qemu:///system}
NJ_TEST_NS=https://nightjar.invalid/test      # metadata namespace of our domains
_nj_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Per-disk state of the domains created by this test, keyed "DOMAIN<TAB>TARGET".
declare -gA _nj_disk_fmt=() _nj_disk_img=() _nj_disk_size=() _nj_disk_opts=() _nj_disk_qdev=() _nj_disk_loop=()

nj_virsh() { virsh -q -c "$NJ_LIBVIRT_URI" "$@"; }

_nj_skip() { echo "SKIP: $*" >&2; exit 77; }
# _nj_die MESSAGE: print MESSAGE; the caller then returns 1 (so that a
# helper called under set -e stops the test, and one called in a condition
# just fails).
_nj_die() { echo "lib-libvirt: $*" >&2; }

# nj_xml_escape STRING: STRING escaped for XML text and attribute values
# (both quote styles).
nj_xml_escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' \
        -e 's/"/\&quot;/g' -e "s/'/\&apos;/g"
}

# nj_bytes SIZE: SIZE (a number with an optional k/K/M/G/T suffix, powers
# of 1024 as in qemu-img and qemu-io) in bytes.
nj_bytes() {
    local s=$1 n m=1
    case $s in
        *[kK]) m=1024 ;;
        *M) m=$((1024 * 1024)) ;;
        *G) m=$((1024 * 1024 * 1024)) ;;
        *T) m=$((1024 * 1024 * 1024 * 1024)) ;;
    esac
    n=${s%[kKMGT]}
    case $n in
        '' | *[!0-9]*) _nj_die "not a size: '$s'"; return 1 ;;
    esac
    echo $((10#$n * m))
}

# nj_unique_name [LABEL]: a fresh domain name nj-test-[LABEL-]XXXXXXXX.
nj_unique_name() {
    local r
    r=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
    echo "nj-test-${1:+$1-}$r"
}

# The user QEMU runs as (qemu.conf "user", Debian's default otherwise).
_nj_qemu_user() {
    local u
    u=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' \
        /etc/libvirt/qemu.conf 2>/dev/null | tail -n 1)
    echo "${u:-libvirt-qemu}"
}

# _nj_as_qemu CMD...: run CMD as the QEMU user (as is when QEMU runs as root).
_nj_as_qemu() {
    local u
    u=$(_nj_qemu_user)
    case $u in
        root | +0 | 0) "$@" ;;
        *) runuser -u "${u#+}" -- "$@" ;;
    esac
}

# nj_virt_type: "kvm" when QEMU's user can open /dev/kvm and libvirt offers
# KVM, "qemu" (TCG) otherwise (scripts/virt-type.sh; NJ_VIRT_TYPE forces it).
nj_virt_type() {
    NJ_LIBVIRT_URI=$NJ_LIBVIRT_URI bash "$_nj_lib_dir/../../scripts/virt-type.sh"
}

# nj_require_libvirt: skip the test (exit 77, with the reason) unless a
# libvirtd with QEMU and backup support can be used; starts libvirtd.
nj_require_libvirt() {
    local t caps
    for t in virsh qemu-system-x86_64 qemu-img qemu-io dd cmp od runuser; do
        command -v "$t" >/dev/null 2>&1 || _nj_skip "$t not installed (apt install libvirt-clients qemu-system-x86 qemu-utils)"
    done
    [ "$(id -u)" -eq 0 ] || _nj_skip "libvirt tests need root (qemu:///system)"
    bash "$_nj_lib_dir/../../scripts/start-libvirt.sh" >&2 || _nj_skip "libvirtd could not be started"
    NJ_VIRT_TYPE=$(nj_virt_type)
    caps=$(nj_virsh domcapabilities --virttype "$NJ_VIRT_TYPE" 2>&1) \
        || _nj_skip "virsh domcapabilities --virttype $NJ_VIRT_TYPE failed: $caps"
    [[ $caps == *"<backup supported='yes'/>"* ]] \
        || _nj_skip "libvirt does not report <backup supported='yes'/> for $NJ_VIRT_TYPE domains"
    # mktemp -d made $T 0700: QEMU (not root) must reach the images in it.
    chmod 0711 "$T"
    _nj_as_qemu test -x "$T" \
        || _nj_skip "QEMU's user $(_nj_qemu_user) cannot reach $T; set TMPDIR to a directory it can traverse"
    _nj_sweep_stale
}

# Remove domains left behind by earlier test runs that died without their
# cleanup (SIGKILL, a meson timeout): ours carry <nj:test pid= pidns= dir=>
# metadata.  A domain is stale when its test process, in our PID namespace,
# is gone (domains of tests in other PID namespaces are never touched).
_nj_sweep_stale() {
    local d md pid ns myns
    myns=$(readlink /proc/self/ns/pid 2>/dev/null) || return 0
    while IFS= read -r d; do
        [ -n "$d" ] || continue
        md=$(nj_virsh metadata "$d" --uri "$NJ_TEST_NS" 2>/dev/null) || continue
        pid=$(printf '%s' "$md" | sed -n "s/.* pid=[\"']\([0-9]*\)[\"'].*/\1/p")
        ns=$(printf '%s' "$md" | sed -n "s/.* pidns=[\"']\([^\"']*\)[\"'].*/\1/p")
        [ -n "$pid" ] && [ "$ns" = "$myns" ] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "lib-libvirt: removing stale test domain '$d' (its test, pid $pid, is gone)" >&2
            _nj_domain_undefine "$d"
        fi
    done < <(nj_virsh list --all --name 2>/dev/null)
}

# nj_has_job DOMAIN: true while DOMAIN has a libvirt job (a pull-mode
# backup shows as an unbounded job, or at least as a backup-dumpxml).
nj_has_job() {
    nj_virsh domjobinfo "$1" 2>/dev/null | grep -Eq '^Job type:[[:space:]]+(Unbounded|Bounded)' \
        || nj_virsh backup-dumpxml "$1" >/dev/null 2>&1
}

# nj_job_dir_of SCRATCH UUID: the agent's job directory in SCRATCH whose
# owner file names UUID (nothing when there is none).
nj_job_dir_of() {
    local f
    for f in "$1"/nj-*/owner; do
        [ -f "$f" ] || continue
        if grep -qxF "uuid $2" "$f"; then echo "${f%/owner}"; return 0; fi
    done
    return 0
}

# nj_job_dir SCRATCH DOMAIN: the same, for DOMAIN's full UUID.
nj_job_dir() { nj_job_dir_of "$1" "$(nj_virsh domuuid "$2")"; }

# nj_qemu_dir NAME: create $T/NAME owned by QEMU's user (mode 0700) and print
# its path.  QEMU creates the NBD socket of a pull-mode backup itself, so
# the socket's directory must be writable by QEMU (libvirt 9.0 does not
# relabel it): put <server socket=> and <scratch file=> there.
nj_qemu_dir() {
    local d=$T/$1 u
    mkdir -p "$d"
    u=$(_nj_qemu_user)
    case $u in root | +0 | 0) ;; *) chown "${u#+}:" "$d" ;; esac
    chmod 0700 "$d"
    echo "$d"
}

_nj_key() { printf '%s\t%s' "$1" "$2"; }

# A file-name-safe, collision-free form of a domain name.
_nj_file_id() {
    local s
    s=$(printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_')
    echo "$s-$(printf '%s' "$1" | cksum | cut -d' ' -f1)"
}

# nj_shadow_path DOMAIN TARGET: the raw file that receives every guest
# write of nj_guest_* (zeros when the domain was created):
# $T/shadow-DOMAIN-TARGET.raw ('/', which libvirt refuses in names anyway,
# becomes '_').
nj_shadow_path() { echo "$T/shadow-${1//\//_}-$2.raw"; }

# nj_image_path DOMAIN TARGET: the disk image of TARGET.
nj_image_path() {
    local k
    k=$(_nj_key "$1" "$2")
    [ -n "${_nj_disk_img[$k]:-}" ] || { _nj_die "no disk $2 on domain '$1' (not made by nj_domain_create)"; return 1; }
    echo "${_nj_disk_img[$k]}"
}

# nj_domain_create NAME DISKSPEC...
#
# Define and start (paused; see NJ_DOMAIN_START) a domain NAME with no
# network, no graphics, 128 MiB, q35, serial to null, on_crash destroy.
# NAME is used verbatim (it may hold quotes, '&', '<', spaces); use
# nj_unique_name for a fresh one.  DISKSPEC is
#
#   TARGET:FORMAT:SIZE[:OPTION[,OPTION]...]
#
#   TARGET  vdX (virtio-blk) or sdX (SATA)
#   FORMAT  qcow2 or raw; a new blank image of SIZE (k/M/G, a multiple
#           of 512 bytes) in $T
#   OPTION  ro     a read-only disk (<readonly/>): libvirt leaves it out of
#                  backups and checkpoints
#           cdrom  a CD-ROM (SATA, read-only): also left out
#           block  (raw only) a <disk type='block'>: the image is a file
#                  in $T attached to a loop device (losetup), which the
#                  domain uses; nj_image_path names the device.  The
#                  cleanup hook detaches it.
#
# Disks get discard='unmap' (else QEMU ignores discards) and the user
# alias ua-nj-TARGET, so the qdev path of TARGET is known.  A cleanup hook
# destroys and undefines the domain (with its checkpoint and snapshot
# metadata) and removes its images and shadows.
nj_domain_create() {
    local name=$1; shift
    [ $# -gt 0 ] || { _nj_die "nj_domain_create: no disks"; return 1; }
    local type=${NJ_VIRT_TYPE:-$(nj_virt_type)} start=${NJ_DOMAIN_START:-paused}
    local fid spec target fmt size opts bytes bus dev img k disks='' o ro blk src dtype loop chan=''
    fid=$(_nj_file_id "$name")
    local xml=$T/domain-$fid.xml
    cleanup_hooks+=("nj_domain_remove $(printf '%q' "$name")")
    for spec in "$@"; do
        IFS=: read -r target fmt size opts <<<"$spec"
        case $target in
            vd[a-z] | vd[a-z][a-z]) bus=virtio ;;
            sd[a-z] | sd[a-z][a-z]) bus=sata ;;
            *) _nj_die "disk spec '$spec': target must be vdX or sdX"; return 1 ;;
        esac
        case $fmt in qcow2 | raw) ;; *) _nj_die "disk spec '$spec': format must be qcow2 or raw"; return 1 ;; esac
        bytes=$(nj_bytes "$size") || return 1
        if [ "$bytes" -le 0 ] || [ $((bytes % 512)) -ne 0 ]; then
            _nj_die "disk spec '$spec': size must be a positive multiple of 512"; return 1
        fi
        dev=disk ro='' blk=''
        for o in ${opts//,/ }; do
            case $o in
                ro) ro=1 ;;
                cdrom) dev=cdrom ro=1 ;;
                block) blk=1 ;;
                *) _nj_die "disk spec '$spec': unknown option '$o'"; return 1 ;;
            esac
        done
        [ "$dev" != cdrom ] || [ "$bus" = sata ] || { _nj_die "disk spec '$spec': a cdrom needs an sdX target"; return 1; }
        k=$(_nj_key "$name" "$target")
        [ -z "${_nj_disk_img[$k]:-}" ] || { _nj_die "disk spec '$spec': target $target given twice"; return 1; }
        img=$T/disk-$fid-$target.$fmt
        [ ! -e "$img" ] || { _nj_die "$img exists: domain '$name' created twice?"; return 1; }
        qemu-img create -q -f "$fmt" "$img" "$bytes"
        truncate -s "$bytes" "$(nj_shadow_path "$name" "$target")"
        src="file='$(nj_xml_escape "$img")'" dtype=file
        if [ -n "$blk" ]; then
            [ "$fmt" = raw ] || { _nj_die "disk spec '$spec': a block disk must be raw"; return 1; }
            command -v losetup >/dev/null 2>&1 || _nj_skip "losetup not installed (apt install mount)"
            loop=$(losetup -f --show "$img") || { _nj_die "losetup of $img failed"; return 1; }
            cleanup_hooks+=("_nj_loop_detach $(printf '%q' "$loop") $(printf '%q' "$img")")
            _nj_disk_loop[$k]=$img
            img=$loop src="dev='$(nj_xml_escape "$loop")'" dtype=block
        fi
        _nj_disk_fmt[$k]=$fmt _nj_disk_img[$k]=$img _nj_disk_size[$k]=$bytes
        _nj_disk_opts[$k]=${ro:+ro}
        if [ "$bus" = virtio ]; then
            _nj_disk_qdev[$k]=/machine/peripheral/ua-nj-$target/virtio-backend
        else
            _nj_disk_qdev[$k]=/machine/peripheral/ua-nj-$target
        fi
        disks+="    <disk type='$dtype' device='$dev'>
      <driver name='qemu' type='$fmt'$([ "$dev" = cdrom ] || echo " discard='unmap'")/>
      <source $src/>
      <target dev='$target' bus='$bus'/>${ro:+
      <readonly/>}
      <alias name='ua-nj-$target'/>
    </disk>
"
    done
    chan=${NJ_DOMAIN_DEVICES:-}
    [ -z "$chan" ] || chan="$chan
"
    local serial="<serial type='null'/>"
    [ -z "${NJ_DOMAIN_CONSOLE:-}" ] || serial="<serial type='file'><source path='$(nj_xml_escape "$NJ_DOMAIN_CONSOLE")'/></serial>"
    _nj_write_domain_xml() {
        cat >"$xml" <<EOF
<domain type='$1'>
  <name>$(nj_xml_escape "$name")</name>${NJ_DOMAIN_UUID:+
  <uuid>$NJ_DOMAIN_UUID</uuid>}
  <description>nightjar test domain</description>
  <metadata>
    <nj:test xmlns:nj='$NJ_TEST_NS' pid='$$' pidns='$(readlink /proc/self/ns/pid 2>/dev/null)' dir='$(nj_xml_escape "$T")'/>
  </metadata>
  <memory unit='MiB'>${NJ_DOMAIN_MEMORY:-128}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>${NJ_DOMAIN_OS:+
    $NJ_DOMAIN_OS}
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
$disks$chan    <controller type='usb' model='none'/>
    $serial
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    }
    _nj_write_domain_xml "$type"
    nj_virsh define "$xml" >/dev/null || { _nj_die "virsh define failed for '$name'"; return 1; }
    [ "$(nj_virsh domname "$(nj_virsh domuuid "$name" 2>/dev/null)" 2>/dev/null)" = "$name" ] \
        || { _nj_die "domain '$name' was not defined under its exact name"; return 1; }
    [ "$start" != no ] || return 0
    if ! nj_virsh start --paused "$name" >/dev/null 2>"$T/start.err"; then
        if [ "$type" = kvm ]; then
            # /dev/kvm opened but KVM does not work (nested virtualisation off...)
            echo "lib-libvirt: KVM start failed ($(tr '\n' ' ' <"$T/start.err")); using TCG" >&2
            NJ_VIRT_TYPE=qemu
            _nj_write_domain_xml qemu
            nj_virsh define "$xml" >/dev/null
            nj_virsh start --paused "$name" >/dev/null || { _nj_die "virsh start failed for '$name'"; return 1; }
        else
            cat "$T/start.err" >&2
            _nj_die "virsh start failed for '$name'"; return 1
        fi
    fi
    [ "$start" != running ] || nj_virsh resume "$name" >/dev/null
}

# _nj_loop_detach DEVICE FILE: detach the loop device DEVICE when it is
# still backed by FILE (once detached, the number may serve someone else).
_nj_loop_detach() {
    local back
    back=$(losetup -n -O BACK-FILE "$1" 2>/dev/null) || return 0
    [ "$(printf '%s' "$back" | sed 's/[[:space:]]*$//')" = "$2" ] || return 0
    losetup -d "$1" 2>/dev/null || true
}

# Destroy and undefine DOMAIN, dropping its checkpoint/snapshot metadata;
# quiet when it does not exist.  Never fails.
_nj_domain_undefine() {
    nj_virsh domuuid "$1" >/dev/null 2>&1 || return 0
    if [ "$(nj_virsh domstate "$1" 2>/dev/null)" != "shut off" ]; then
        nj_virsh destroy "$1" >/dev/null 2>&1 || true
    fi
    nj_virsh undefine --checkpoints-metadata --snapshots-metadata --managed-save --nvram \
        "$1" >/dev/null 2>&1 \
        || nj_virsh undefine --checkpoints-metadata "$1" >/dev/null 2>&1 \
        || nj_virsh undefine "$1" >/dev/null 2>&1 || true
    return 0
}

# nj_domain_remove DOMAIN: what the cleanup hook does (safe to call early,
# and more than once): destroy, undefine, remove images and shadows.
nj_domain_remove() {
    local name=$1 k
    _nj_domain_undefine "$name"
    for k in "${!_nj_disk_img[@]}"; do
        [ "${k%%$'\t'*}" = "$name" ] || continue
        [ -n "${_nj_disk_img[$k]}" ] || continue
        if [ -n "${_nj_disk_loop[$k]:-}" ]; then
            _nj_loop_detach "${_nj_disk_img[$k]}" "${_nj_disk_loop[$k]}"
            rm -f "${_nj_disk_loop[$k]}"
            _nj_disk_loop[$k]=''
        else
            rm -f "${_nj_disk_img[$k]}"
        fi
        rm -f "$(nj_shadow_path "$name" "${k#*$'\t'}")"
        # emptied, not unset: unset would expand the key (a domain name) again
        _nj_disk_img[$k]='' _nj_disk_fmt[$k]='' _nj_disk_size[$k]='' _nj_disk_opts[$k]='' _nj_disk_qdev[$k]=
    done
    return 0
}

# _nj_guest_io DOMAIN TARGET PATTERN OFFSET LENGTH QEMU-IO-CMD: run one
# qemu-io command on the disk through the monitor, flush, repeat it on the
# shadow (PATTERN bytes) and read it back from the live image.
_nj_guest_io() {
    local dom=$1 target=$2 pat=$3 off len k out cmd=$6
    k=$(_nj_key "$dom" "$target")
    [ -n "${_nj_disk_img[$k]:-}" ] || { _nj_die "no disk $target on domain '$dom' (not made by nj_domain_create)"; return 1; }
    [ -z "${_nj_disk_opts[$k]}" ] || { _nj_die "disk $target of '$dom' is read-only"; return 1; }
    off=$(nj_bytes "$4") && len=$(nj_bytes "$5") || return 1
    if [ "$len" -le 0 ] || [ $((off + len)) -gt "${_nj_disk_size[$k]}" ]; then
        _nj_die "range $off+$len outside disk $target of '$dom' (${_nj_disk_size[$k]} bytes)"; return 1
    fi
    # qemu-io prints its results on QEMU's stdout (the domain log), not on
    # the monitor: anything the monitor answers is an error.
    out=$(nj_virsh qemu-monitor-command "$dom" --hmp \
        "qemu-io -d ${_nj_disk_qdev[$k]} \"$cmd $off $len\"" 2>&1) || { _nj_die "qemu-io $cmd on $target of '$dom': $out"; return 1; }
    out=$(printf '%s' "$out" | tr -d '\r' | sed '/^[[:space:]]*$/d')
    [ -z "$out" ] || { _nj_die "qemu-io $cmd on $target of '$dom': $out"; return 1; }
    out=$(nj_virsh qemu-monitor-command "$dom" --hmp \
        "qemu-io -d ${_nj_disk_qdev[$k]} \"flush\"" 2>&1 | tr -d '\r' | sed '/^[[:space:]]*$/d') || true
    [ -z "$out" ] || { _nj_die "flush of $target of '$dom': $out"; return 1; }
    if [ "$pat" -eq 0 ]; then
        dd if=/dev/zero bs=1M iflag=count_bytes count="$len" status=none
    else
        head -c "$len" /dev/zero | tr '\0' "\\$(printf '%03o' "$pat")"
    fi | dd of="$(nj_shadow_path "$dom" "$target")" bs=1M oflag=seek_bytes seek="$off" \
        conv=notrunc status=none
    if [ "${NJ_GUEST_VERIFY:-1}" != 0 ]; then
        out=$(qemu-io -U -r -f "${_nj_disk_fmt[$k]}" "${_nj_disk_img[$k]}" \
            -c "read -P $pat $off $len" 2>&1) && ! printf '%s' "$out" | grep -q 'verification failed' \
            || { _nj_die "$cmd $off+$len on $target of '$dom' did not reach the image: $out"; return 1; }
    fi
}

# nj_guest_write DOMAIN TARGET PATTERN OFFSET LENGTH: the guest writes
# LENGTH bytes of PATTERN (a byte: 0xab or 171) at OFFSET.  OFFSET and
# LENGTH are bytes or k/M/G sizes; any alignment.
nj_guest_write() {
    local p
    case $3 in
        0x[0-9a-fA-F] | 0x[0-9a-fA-F][0-9a-fA-F]) p=$(($3)) ;;
        [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) p=$((10#$3)) ;;
        *) _nj_die "pattern must be a byte, like 0xab: '$3'"; return 1 ;;
    esac
    [ "$p" -le 255 ] || { _nj_die "pattern must be a byte: '$3'"; return 1; }
    _nj_guest_io "$1" "$2" "$p" "$4" "$5" "write -P $p"
}

# nj_guest_zero DOMAIN TARGET OFFSET LENGTH: the guest writes zeroes
# (write-zeroes, "write -z"); any alignment.
nj_guest_zero() { _nj_guest_io "$1" "$2" 0 "$3" "$4" "write -z"; }

# nj_guest_discard DOMAIN TARGET OFFSET LENGTH: the guest discards (trims)
# the range.  OFFSET and LENGTH must be multiples of 64 KiB (the qcow2
# cluster; QEMU silently keeps the data of partial clusters), LENGTH may end
# at the end of the disk.  The range must read back as zeroes afterwards,
# which holds for raw files and qcow2 images without a backing file.
nj_guest_discard() {
    local k off len g=65536
    k=$(_nj_key "$1" "$2")
    off=$(nj_bytes "$3") && len=$(nj_bytes "$4") || return 1
    if [ $((off % g)) -ne 0 ] || { [ $((len % g)) -ne 0 ] && [ $((off + len)) -ne "${_nj_disk_size[$k]:-0}" ]; }; then
        _nj_die "discard $off+$len: offset and length must be multiples of 64 KiB"; return 1
    fi
    _nj_guest_io "$1" "$2" 0 "$off" "$len" "discard"
}

# nj_guest_check DOMAIN TARGET: the live image of TARGET equals its shadow.
nj_guest_check() {
    local k
    k=$(_nj_key "$1" "$2")
    [ -n "${_nj_disk_img[$k]:-}" ] || { _nj_die "no disk $2 on domain '$1'"; return 1; }
    qemu-img compare -q -U -f "${_nj_disk_fmt[$k]}" -F raw "${_nj_disk_img[$k]}" \
        "$(nj_shadow_path "$1" "$2")"
}
