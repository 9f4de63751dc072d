"""Tiny boot images for the e2e tests of `kernel` and `sanboot` profiles, built in Python.

Each carries a few bytes of 16-bit real-mode code that write to COM1 (port 0x3f8) what the
loader handed it and then reset the machine through the keyboard controller, so under QEMU's
`-no-reboot` the VM ends by itself once its message is on the serial log.

- `eltorito_iso`: an ISO 9660 image (a primary volume descriptor with a root directory and
  its path tables) that is bootable by El Torito (a boot record, a boot catalog with one
  no-emulation x86 entry). iPXE's BIOS `sanboot` of it over HTTP shows that the ISO was read
  through proxydhcp's HTTP (with Range requests) and that its boot code ran. Layout, in
  2048-byte sectors: 0-15 empty (system area), 16 primary volume descriptor, 17 El Torito
  boot record, 18 descriptor set terminator, 19 boot catalog, 20 L path table, 21 M path
  table, 22 root directory, 23 boot image.
- `linux_bzimage`: a Linux bzImage (boot protocol 2.06) whose real-mode setup code prints
  the command line and the initrd size that the loader (iPXE's `kernel`, `initrd`, `boot`)
  wrote into its header. It shows that a `kernel` profile's script gave iPXE the right
  kernel, command line and initrd.
"""

from __future__ import annotations

import struct

SECTOR = 2048
PVD, BOOT_RECORD, TERMINATOR, CATALOG, L_PATH, M_PATH, ROOT_DIR, BOOT_IMAGE = range(16, 24)
SECTORS = 24

# Loaded at 07C0:0000 by iPXE (El Torito, load segment 0), at 0000:7C00 by SeaBIOS: the code
# finds its message from its own address, so either entry point works.
#   call here / here: pop si  si = the offset of `here` in the code segment
#   add si, MESSAGE - here     the message follows the code
#   push cs / pop ds
#   mov dx, 0x3f8             COM1 transmit register
#   next: lodsb / test al,al / jz done / out dx,al / jmp next
#   done: mov al, 0xfe / out 0x64, al     pulse the reset line
#   cli / hlt / jmp hlt       should the reset not come
BOOT_CODE = bytes.fromhex(
    "e80000" "5e" "83c619" "0e1f" "baf803"
    "ac" "84c0" "7403" "ee" "ebf8"
    "b0fe" "e664"
    "faf4" "ebfd")
MESSAGE_OFFSET = 0x1c
assert len(BOOT_CODE) == MESSAGE_OFFSET


def _both16(v: int) -> bytes:
    return struct.pack("<H", v) + struct.pack(">H", v)


def _both32(v: int) -> bytes:
    return struct.pack("<I", v) + struct.pack(">I", v)


def _dir_record(extent: int, size: int, ident: bytes) -> bytes:
    body = (_both32(extent) + _both32(size) + bytes(7) + bytes([2, 0, 0]) + _both16(1)
            + bytes([len(ident)]) + ident)
    record = bytes([33 + len(ident), 0]) + body
    return record + bytes(len(record) % 2)


def _path_table(big_endian: bool) -> bytes:
    fmt = ">IH" if big_endian else "<IH"
    return bytes([1, 0]) + struct.pack(fmt, ROOT_DIR, 1) + b"\0\0"


def _text(value: str, size: int) -> bytes:
    return value.encode("ascii").ljust(size, b" ")


def validation_checksum(entry: bytes) -> int:
    """The 16-bit word that makes the words of a validation entry sum to zero."""
    total = sum(struct.unpack("<16H", entry[:28] + b"\0\0" + entry[30:32]))
    return (-total) & 0xFFFF


def eltorito_iso(message: str, volume_id: str = "PROXYDHCP_E2E") -> bytes:
    """The image; `message` (ASCII, no NUL) is what its boot code writes to COM1."""
    text = message.encode("ascii")
    if b"\0" in text or MESSAGE_OFFSET + len(text) + 1 > 4 * 512:
        raise ValueError("the message must be ASCII without NUL and fit the 2 KiB boot image")
    sectors = [bytearray(SECTOR) for _ in range(SECTORS)]

    root = _dir_record(ROOT_DIR, SECTOR, b"\0")
    pvd = sectors[PVD]
    pvd[0:7] = b"\x01CD001\x01"
    pvd[8:40] = _text("", 32)
    pvd[40:72] = _text(volume_id, 32)
    pvd[80:88] = _both32(SECTORS)
    pvd[120:124] = _both16(1)
    pvd[124:128] = _both16(1)
    pvd[128:132] = _both16(SECTOR)
    pvd[132:140] = _both32(len(_path_table(False)))
    pvd[140:144] = struct.pack("<I", L_PATH)
    pvd[148:152] = struct.pack(">I", M_PATH)
    pvd[156:156 + len(root)] = root
    pvd[190:813] = _text("", 813 - 190)
    for at in (813, 830, 847, 864):      # creation, modification, expiration, effective dates
        pvd[at:at + 17] = b"0" * 16 + b"\0"
    pvd[881] = 1

    boot = sectors[BOOT_RECORD]
    boot[0:7] = b"\x00CD001\x01"
    boot[7:39] = b"EL TORITO SPECIFICATION".ljust(32, b"\0")
    boot[71:75] = struct.pack("<I", CATALOG)

    sectors[TERMINATOR][0:7] = b"\xffCD001\x01"

    validation = bytearray(32)
    validation[0] = 1                         # header id; platform 0 = x86
    validation[4:28] = b"proxydhcp e2e".ljust(24, b"\0")
    validation[30:32] = b"\x55\xaa"
    validation[28:30] = struct.pack("<H", validation_checksum(bytes(validation)))
    default = struct.pack("<BBHBBHI", 0x88, 0, 0, 0, 0, 4, BOOT_IMAGE) + bytes(20)
    sectors[CATALOG][0:64] = bytes(validation) + default

    sectors[L_PATH][0:10] = _path_table(False)
    sectors[M_PATH][0:10] = _path_table(True)
    here, parent = _dir_record(ROOT_DIR, SECTOR, b"\0"), _dir_record(ROOT_DIR, SECTOR, b"\1")
    sectors[ROOT_DIR][0:len(here) + len(parent)] = here + parent

    image = BOOT_CODE + text + b"\0"
    sectors[BOOT_IMAGE][0:len(image)] = image
    return b"".join(bytes(s) for s in sectors)


# Setup code of the bzImage, at file offset 0x280 (the jump at 0x200 leads there); iPXE enters
# it at (DS + 0x20):0000 with DS = the real-mode kernel's segment, so file offsets are DS
# offsets. Assembled from (GNU as, .code16):
#       mov $0x3f8,%dx;  mov $HEAD,%si;  call puts
#       mov %ds,%ax;  movzwl %ax,%eax;  shl $4,%eax
#       mov 0x228,%esi;  sub %eax,%esi;  call puts        cmd_line_ptr, as a DS offset
#       mov $MID,%si;  call puts
#       mov 0x21c,%eax;  call puthex                      ramdisk_size
#       mov $TAIL,%si;  call puts
#       mov $0xfe,%al;  out %al,$0x64                     reset
#   1:  cli;  hlt;  jmp 1b
#   puts:   lodsb;  test %al,%al;  je 2f;  out %al,(%dx);  jmp puts;  2: ret
#   puthex: mov $8,%cx;  3: rol $4,%eax;  push %eax;  and $0xf,%al;  add $0x30,%al
#           cmp $0x39,%al;  jbe 4f;  add $7,%al;  4: out %al,(%dx);  pop %eax;  loop 3b;  ret
SETUP_CODE = bytes.fromhex(
    "baf803be0003e830008cd8660fb7c066c1e004668b3628026629c6e81b00be2003e8150066a11c02e817"
    "00be4003e80800b0fee664faf4ebfcac84c07403eeebf8c3b9080066c1c0046650240f04303c39760204"
    "07ee6658e2ebc3")
SETUP_AT, HEAD_AT, MID_AT, TAIL_AT, SETUP_END = 0x280, 0x300, 0x320, 0x340, 0x400
assert SETUP_AT + len(SETUP_CODE) <= HEAD_AT


def linux_bzimage(head: str, mid: str, tail: str) -> bytes:
    """The kernel: its boot code prints head, the command line, mid, the initrd size (8 hex
    digits), tail."""
    image = bytearray(SETUP_END + 512)     # boot sector, one setup sector, a protected-mode part
    image[0x1F1] = 1                       # setup_sects
    image[0x1FE:0x200] = b"\x55\xaa"       # boot_flag
    image[0x200:0x202] = bytes([0xEB, SETUP_AT - 0x202])   # jmp to the setup code
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = struct.pack("<H", 0x0206)         # boot protocol 2.06
    image[0x211] = 0x01                    # loadflags: LOADED_HIGH (a bzImage)
    image[0x214:0x218] = struct.pack("<I", 0x100000)       # code32_start
    image[0x22C:0x230] = struct.pack("<I", 0x37FFFFFF)     # initrd_addr_max
    image[0x238:0x23C] = struct.pack("<I", 255)            # cmdline_size
    image[SETUP_AT:SETUP_AT + len(SETUP_CODE)] = SETUP_CODE
    for at, end, value in ((HEAD_AT, MID_AT, head), (MID_AT, TAIL_AT, mid), (TAIL_AT, SETUP_END, tail)):
        text = value.encode("ascii") + b"\0"
        if b"\0" in text[:-1] or len(text) > end - at:
            raise ValueError(f"{value!r}: ASCII without NUL, at most {end - at - 1} characters")
        image[at:at + len(text)] = text
    return bytes(image)
