/* gptprio.c - choose the USR partition to boot from GPT priority attributes.  */
/*
 *  Copyright (C) 2026  The ab-updater authors
 *
 *  This module is free software: you can redistribute it and/or modify
 *  it under the terms of the GNU General Public License as published by
 *  the Free Software Foundation, either version 3 of the License, or
 *  (at your option) any later version.
 *
 *  It is distributed in the hope that it will be useful,
 *  but WITHOUT ANY WARRANTY; without even the implied warranty of
 *  MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
 *  GNU General Public License for more details.
 *
 *  You should have received a copy of the GNU General Public License
 *  along with GRUB.  If not, see <http://www.gnu.org/licenses/>.
 */

/*
 * gptprio.next -d DEVVAR -u UUIDVAR [DISK]
 *
 * Reads both GPT copies of DISK (default: the disk of $root), validates each
 * (signature, header size, header CRC, own and alternate LBA, usable range,
 * entry array location, entry array CRC), and among the entries whose type is
 * the CoreOS usr type picks the one with the highest priority > 0 whose
 * tries > 0 or successful = 1; ties go to the lowest entry index.  Attribute
 * bits: priority 48-51, tries 52-55, successful 56; all other bits are kept.
 *
 * The table is read from the primary copy when it validates, otherwise from
 * the backup.  If the winner has tries > 0 the tries are decremented and the
 * table is written back, backup (entries, header) first, then primary
 * (entries, header), each with fresh CRCs.  When only one copy validates,
 * the other is first rebuilt from it for its own place on the disk (a try
 * must be spent even on a damaged table, or a trial slot that dies before
 * userspace repairs the table would boot again forever); nothing is written
 * if the rebuilt copy would not pass the checks above, or if two valid copies
 * disagree on the entry array geometry.  A boot that decrements nothing
 * writes nothing, damaged copy or not.  With no candidate the command fails
 * and leaves DEVVAR and UUIDVAR untouched.
 *
 * DEVVAR receives the GRUB device of the winner (e.g. "hd0,gpt4"), UUIDVAR
 * its unique partition GUID in lower-case text form.
 *
 * The module also registers a second partition map named "gpt" that lists
 * partitions from the backup copy, and only when the primary copy does not
 * validate and the backup does.  GRUB 2.06's own part_gpt reads the primary
 * copy only; when it fails (e.g. a zeroed primary header) grub_partition_probe
 * tries the next map of the same name, so "(hd0,gpt4)" still resolves and the
 * disk boots by its backup copy.  With a valid primary this map declines and
 * part_gpt does the work as before.
 */

#include <grub/types.h>
#include <grub/misc.h>
#include <grub/mm.h>
#include <grub/err.h>
#include <grub/dl.h>
#include <grub/disk.h>
#include <grub/partition.h>
#include <grub/env.h>
#include <grub/extcmd.h>
#include <grub/i18n.h>

GRUB_MOD_LICENSE ("GPLv3+");

/* Largest entry array accepted (bytes); real tables use 16 KiB.  */
#define GPTPRIO_MAX_ENTRY_BYTES (1024 * 1024)
/* Size of a GPT partition entry as defined by the UEFI specification.  */
#define GPTPRIO_MIN_ENTRY_SIZE 128
/* Size of the GPT header fields covered by this module.  */
#define GPTPRIO_MIN_HEADER_SIZE 92

/* Header field offsets (UEFI 2.x, table "GPT Header").  */
#define HDR_SIGNATURE 0
#define HDR_SIZE 12
#define HDR_CRC 16
#define HDR_MY_LBA 24
#define HDR_ALT_LBA 32
#define HDR_FIRST_USABLE 40
#define HDR_LAST_USABLE 48
#define HDR_ENTRIES_LBA 72
#define HDR_NUM_ENTRIES 80
#define HDR_ENTRY_SIZE 84
#define HDR_ENTRIES_CRC 88

/* Entry field offsets.  */
#define ENT_TYPE 0
#define ENT_UNIQUE 16
#define ENT_ATTRS 48

#define PRIO_SHIFT 48
#define TRIES_SHIFT 52
#define SUCCESS_SHIFT 56

/* 5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6 as stored on disk (mixed endian).  */
static const grub_uint8_t usr_type[16] = {
  0xf4, 0xf5, 0xfb, 0x5d, 0x48, 0x28, 0xac, 0x4b,
  0xaa, 0x5e, 0x0d, 0x9a, 0x20, 0xb7, 0x45, 0xa6
};

static const struct grub_arg_option options[] = {
  {"set-device", 'd', 0, N_("Store the chosen partition's device in VAR."),
   N_("VAR"), ARG_TYPE_STRING},
  {"set-uuid", 'u', 0, N_("Store the chosen partition's unique GUID in VAR."),
   N_("VAR"), ARG_TYPE_STRING},
  {0, 0, 0, 0, 0, 0}
};

/* One copy (primary or backup) of the GPT as read from disk.  */
struct gpt_copy
{
  const char *what;		/* "primary" or "backup", for messages */
  grub_disk_addr_t lba;		/* where the header was read */
  grub_uint8_t *header;		/* one logical sector */
  grub_uint8_t *entries;	/* entry array, whole sectors */
  grub_size_t entries_alloc;	/* bytes allocated for entries */
  grub_uint32_t num_entries;
  grub_uint32_t entry_size;
  grub_uint64_t entries_lba;
  int valid;
};

/* CRC-32 (IEEE 802.3, reflected, as used by GPT), table computed on first use.  */
static grub_uint32_t crc_table[256];

static grub_uint32_t
gptprio_crc32 (const grub_uint8_t *buf, grub_size_t len)
{
  grub_uint32_t crc = 0xffffffff;
  grub_size_t i;

  if (crc_table[1] == 0)
    for (i = 0; i < 256; i++)
      {
	grub_uint32_t c = (grub_uint32_t) i;
	int bit;

	for (bit = 0; bit < 8; bit++)
	  c = (c >> 1) ^ (0xedb88320 & (-(c & 1)));
	crc_table[i] = c;
      }
  for (i = 0; i < len; i++)
    crc = (crc >> 8) ^ crc_table[(crc ^ buf[i]) & 0xff];
  return crc ^ 0xffffffff;
}

static grub_uint32_t
get32 (const grub_uint8_t *p)
{
  return (grub_uint32_t) p[0] | ((grub_uint32_t) p[1] << 8)
    | ((grub_uint32_t) p[2] << 16) | ((grub_uint32_t) p[3] << 24);
}

static grub_uint64_t
get64 (const grub_uint8_t *p)
{
  return (grub_uint64_t) get32 (p) | ((grub_uint64_t) get32 (p + 4) << 32);
}

static void
put32 (grub_uint8_t *p, grub_uint32_t v)
{
  p[0] = v & 0xff;
  p[1] = (v >> 8) & 0xff;
  p[2] = (v >> 16) & 0xff;
  p[3] = (v >> 24) & 0xff;
}

static void
put64 (grub_uint8_t *p, grub_uint64_t v)
{
  put32 (p, (grub_uint32_t) (v & 0xffffffff));
  put32 (p + 4, (grub_uint32_t) (v >> 32));
}

static grub_uint32_t
header_crc (const struct gpt_copy *c, grub_uint32_t header_size)
{
  grub_uint8_t saved[4];
  grub_uint32_t crc;

  grub_memcpy (saved, c->header + HDR_CRC, 4);
  grub_memset (c->header + HDR_CRC, 0, 4);
  crc = gptprio_crc32 (c->header, header_size);
  grub_memcpy (c->header + HDR_CRC, saved, 4);
  return crc;
}

static void
copy_free (struct gpt_copy *c)
{
  grub_free (c->header);
  grub_free (c->entries);
  c->header = 0;
  c->entries = 0;
}

/*
 * Checks the header in C->header as the copy at C->lba, whose alternate must
 * be EXPECT_ALT on a disk of TOTAL logical sectors, and takes the entry array
 * geometry from it: signature, header size and CRC, own and alternate LBA,
 * usable range, entry size and count, and an entry array that lies between
 * the header and the usable range.  The entry array itself is not looked at.
 * Returns 1 when every check passes.
 */
static int
header_check (struct gpt_copy *c, grub_size_t secsize,
	      grub_uint64_t expect_alt, grub_uint64_t total, int is_primary)
{
  grub_uint32_t header_size;
  grub_uint64_t first_usable, last_usable, entries_sectors, entries_end;

  if (grub_memcmp (c->header + HDR_SIGNATURE, "EFI PART", 8) != 0)
    {
      grub_dprintf ("gptprio", "%s header: no signature\n", c->what);
      return 0;
    }
  header_size = get32 (c->header + HDR_SIZE);
  if (header_size < GPTPRIO_MIN_HEADER_SIZE || header_size > secsize
      || header_crc (c, header_size) != get32 (c->header + HDR_CRC))
    {
      grub_dprintf ("gptprio", "%s header: bad size or CRC\n", c->what);
      return 0;
    }

  first_usable = get64 (c->header + HDR_FIRST_USABLE);
  last_usable = get64 (c->header + HDR_LAST_USABLE);
  c->entries_lba = get64 (c->header + HDR_ENTRIES_LBA);
  c->num_entries = get32 (c->header + HDR_NUM_ENTRIES);
  c->entry_size = get32 (c->header + HDR_ENTRY_SIZE);

  if (get64 (c->header + HDR_MY_LBA) != c->lba
      || get64 (c->header + HDR_ALT_LBA) != expect_alt
      || first_usable > last_usable || last_usable >= total
      || c->entry_size < GPTPRIO_MIN_ENTRY_SIZE || (c->entry_size % 8) != 0
      || c->num_entries == 0
      || (grub_uint64_t) c->num_entries * c->entry_size
	 > GPTPRIO_MAX_ENTRY_BYTES)
    {
      grub_dprintf ("gptprio", "%s header: bad LBAs or entry geometry\n",
		    c->what);
      return 0;
    }

  /* At most GPTPRIO_MAX_ENTRY_BYTES, so grub_size_t arithmetic suffices (and
     i386 has no 64-bit division in the kernel).  */
  entries_sectors = ((grub_size_t) c->num_entries * c->entry_size
		     + secsize - 1) / secsize;
  entries_end = c->entries_lba + entries_sectors;	/* exclusive */
  if (entries_end < c->entries_lba
      || (is_primary
	  ? (c->entries_lba <= c->lba || entries_end > first_usable)
	  : (c->entries_lba <= last_usable || entries_end > c->lba)))
    {
      grub_dprintf ("gptprio", "%s header: entry array misplaced\n", c->what);
      return 0;
    }
  c->entries_alloc = entries_sectors * secsize;
  return 1;
}

/*
 * Reads the header at LBA and its entry array, and sets C->valid when every
 * check passes (header_check, then the entry array CRC).  EXPECT_ALT is the
 * LBA the header must name as its alternate; TOTAL is the disk size in
 * logical sectors.  Returns an error only for failures that are not about
 * the table's contents (out of memory).
 */
static grub_err_t
copy_read (grub_disk_t disk, struct gpt_copy *c, grub_disk_addr_t lba,
	   grub_uint64_t expect_alt, grub_uint64_t total, int is_primary)
{
  grub_size_t secsize = (grub_size_t) 1 << disk->log_sector_size;

  c->lba = lba;
  c->valid = 0;
  c->header = grub_malloc (secsize);
  if (!c->header)
    return grub_errno;

  if (lba >= total
      || grub_disk_read (disk, grub_disk_from_native_sector (disk, lba), 0,
			 secsize, c->header) != GRUB_ERR_NONE)
    {
      grub_dprintf ("gptprio", "%s header at LBA %llu unreadable\n", c->what,
		    (unsigned long long) lba);
      grub_errno = GRUB_ERR_NONE;
      return GRUB_ERR_NONE;
    }
  if (!header_check (c, secsize, expect_alt, total, is_primary))
    return GRUB_ERR_NONE;

  c->entries = grub_zalloc (c->entries_alloc);
  if (!c->entries)
    return grub_errno;
  if (grub_disk_read (disk, grub_disk_from_native_sector (disk,
							 c->entries_lba),
		      0, c->entries_alloc, c->entries) != GRUB_ERR_NONE)
    {
      grub_dprintf ("gptprio", "%s entries unreadable\n", c->what);
      grub_errno = GRUB_ERR_NONE;
      return GRUB_ERR_NONE;
    }
  if (gptprio_crc32 (c->entries, (grub_size_t) c->num_entries * c->entry_size)
      != get32 (c->header + HDR_ENTRIES_CRC))
    {
      grub_dprintf ("gptprio", "%s entries: bad CRC\n", c->what);
      return GRUB_ERR_NONE;
    }

  c->valid = 1;
  return GRUB_ERR_NONE;
}

/* Copies ENTRIES into C and refreshes the entry array CRC, then the header CRC. */
static void
copy_seal (struct gpt_copy *c, const grub_uint8_t *entries)
{
  grub_memcpy (c->entries, entries, c->entries_alloc);
  put32 (c->header + HDR_ENTRIES_CRC,
	 gptprio_crc32 (c->entries,
			(grub_size_t) c->num_entries * c->entry_size));
  put32 (c->header + HDR_CRC, header_crc (c, get32 (c->header + HDR_SIZE)));
}

/*
 * Rebuilds DST, a copy that did not validate, from SRC, the one that did, for
 * DST's own place on the disk: SRC's header with DST's LBA as its own, SRC's
 * as the alternate, and the entry array next to DST's header (LBA 2 for the
 * primary, the sectors just below the header for the backup); SRC's entries;
 * fresh CRCs.  Sets *OK when the rebuilt header passes the checks a header
 * read from disk must pass.  Returns an error only when out of memory.
 */
static grub_err_t
copy_rebuild (struct gpt_copy *dst, const struct gpt_copy *src,
	      grub_size_t secsize, grub_uint64_t total, int is_primary,
	      int *ok)
{
  grub_size_t sectors = src->entries_alloc / secsize;

  *ok = 0;
  grub_free (dst->entries);
  dst->entries = grub_zalloc (src->entries_alloc);
  if (!dst->entries)
    return grub_errno;
  dst->entries_alloc = src->entries_alloc;
  dst->num_entries = src->num_entries;
  dst->entry_size = src->entry_size;
  dst->entries_lba = is_primary ? 2 : dst->lba - sectors;
  if (!is_primary && sectors >= dst->lba)
    return GRUB_ERR_NONE;

  grub_memcpy (dst->header, src->header, secsize);
  put64 (dst->header + HDR_MY_LBA, dst->lba);
  put64 (dst->header + HDR_ALT_LBA, src->lba);
  put64 (dst->header + HDR_ENTRIES_LBA, dst->entries_lba);
  copy_seal (dst, src->entries);
  *ok = header_check (dst, secsize, src->lba, total, is_primary)
    && dst->entries_alloc == src->entries_alloc;
  return GRUB_ERR_NONE;
}

/* Copies ENTRIES into C, refreshes both CRCs and writes entries, then header. */
static grub_err_t
copy_write (grub_disk_t disk, struct gpt_copy *c, const grub_uint8_t *entries)
{
  grub_size_t secsize = (grub_size_t) 1 << disk->log_sector_size;

  copy_seal (c, entries);
  if (grub_disk_write (disk, grub_disk_from_native_sector (disk,
							  c->entries_lba),
		       0, c->entries_alloc, c->entries) != GRUB_ERR_NONE)
    return grub_errno;
  return grub_disk_write (disk, grub_disk_from_native_sector (disk, c->lba),
			  0, secsize, c->header);
}

/* Size of DISK (or of the partition it is opened on) in logical sectors;
   grub_disk_native_sectors counts 512-byte units.  */
static grub_uint64_t
logical_sectors (grub_disk_t disk)
{
  grub_uint64_t n = grub_disk_native_sectors (disk);

  if (n == GRUB_DISK_SIZE_UNKNOWN)
    return n;
  return n >> (disk->log_sector_size - GRUB_DISK_SECTOR_BITS);
}

/* Returns a freshly allocated disk name from ARG or from $root.  */
static char *
disk_name (int argc, char **args)
{
  const char *src;
  grub_size_t len;

  if (argc > 0)
    src = args[0];
  else
    {
      src = grub_env_get ("root");
      if (!src || !*src)
	{
	  grub_error (GRUB_ERR_BAD_ARGUMENT,
		      N_("no disk given and $root is not set"));
	  return 0;
	}
    }

  if (*src == '(')
    src++;
  /* The disk part of a device name ends at the first unescaped comma.  */
  for (len = 0; src[len] && src[len] != ',' && src[len] != ')'; len++)
    if (src[len] == '\\' && src[len + 1])
      len++;
  if (len == 0)
    {
      grub_error (GRUB_ERR_BAD_ARGUMENT, N_("empty disk name"));
      return 0;
    }
  return grub_strndup (src, len);
}

static grub_err_t
grub_cmd_next (grub_extcmd_context_t ctxt, int argc, char **args)
{
  struct grub_arg_list *state = ctxt->state;
  struct gpt_copy primary = { .what = "primary" };
  struct gpt_copy backup = { .what = "backup" };
  struct gpt_copy *src;
  grub_disk_t disk = 0;
  char *name = 0;
  char *device = 0;
  char uuid[37];
  grub_uint64_t total, backup_lba;
  grub_uint32_t i;
  grub_int64_t best = -1;
  unsigned best_prio = 0;
  grub_uint8_t *ent;
  grub_uint64_t attrs;
  unsigned tries;
  grub_err_t err = GRUB_ERR_NONE;

  if (!state[0].set || !state[1].set)
    return grub_error (GRUB_ERR_BAD_ARGUMENT,
		       N_("both -d DEVVAR and -u UUIDVAR are required"));
  if (argc > 1)
    return grub_error (GRUB_ERR_BAD_ARGUMENT, N_("at most one disk expected"));

  name = disk_name (argc, args);
  if (!name)
    return grub_errno;
  disk = grub_disk_open (name);
  if (!disk)
    {
      err = grub_errno;
      goto out;
    }
  if (disk->log_sector_size < GRUB_DISK_SECTOR_BITS
      || disk->log_sector_size > 12)
    {
      err = grub_error (GRUB_ERR_BAD_DEVICE,
			N_("%s: unsupported sector size 2^%u"), name,
			disk->log_sector_size);
      goto out;
    }

  total = logical_sectors (disk);
  if (total == GRUB_DISK_SIZE_UNKNOWN || total < 3)
    {
      err = grub_error (GRUB_ERR_BAD_DEVICE, N_("%s: disk size unknown"),
			name);
      goto out;
    }

  /* The backup header sits in the last sector of the disk.  */
  backup_lba = total - 1;
  err = copy_read (disk, &primary, 1, backup_lba, total, 1);
  if (err)
    goto out;
  err = copy_read (disk, &backup, backup_lba, 1, total, 0);
  if (err)
    goto out;

  if (primary.valid)
    src = &primary;
  else if (backup.valid)
    src = &backup;
  else
    {
      err = grub_error (GRUB_ERR_BAD_PART_TABLE,
			N_("%s: neither GPT copy is valid"), name);
      goto out;
    }

  for (i = 0; i < src->num_entries; i++)
    {
      unsigned prio, succ;

      ent = src->entries + (grub_size_t) i * src->entry_size;
      if (grub_memcmp (ent + ENT_TYPE, usr_type, 16) != 0)
	continue;
      attrs = get64 (ent + ENT_ATTRS);
      prio = (attrs >> PRIO_SHIFT) & 0xf;
      tries = (attrs >> TRIES_SHIFT) & 0xf;
      succ = (attrs >> SUCCESS_SHIFT) & 1;
      grub_dprintf ("gptprio", "entry %u: P%u T%u S%u\n", i + 1, prio, tries,
		    succ);
      if (prio > best_prio && (tries > 0 || succ))
	{
	  best = i;
	  best_prio = prio;
	}
    }

  if (best < 0)
    {
      err = grub_error (GRUB_ERR_UNKNOWN_DEVICE,
			N_("%s: no bootable usr partition"), name);
      goto out;
    }

  ent = src->entries + (grub_size_t) best * src->entry_size;
  attrs = get64 (ent + ENT_ATTRS);
  tries = (attrs >> TRIES_SHIFT) & 0xf;
  if (tries > 0)
    {
      grub_size_t secsize = (grub_size_t) 1 << disk->log_sector_size;
      int writable = 1;

      attrs = (attrs & ~((grub_uint64_t) 0xf << TRIES_SHIFT))
	| ((grub_uint64_t) (tries - 1) << TRIES_SHIFT);
      put64 (ent + ENT_ATTRS, attrs);
      /* A try must be spent even on a damaged table (DESIGN 4): the copy
	 that does not validate is rebuilt from the one that does.  */
      if (!primary.valid)
	{
	  grub_dprintf ("gptprio", "rebuilding the primary from the backup\n");
	  err = copy_rebuild (&primary, &backup, secsize, total, 1, &writable);
	}
      else if (!backup.valid)
	{
	  grub_dprintf ("gptprio", "rebuilding the backup from the primary\n");
	  err = copy_rebuild (&backup, &primary, secsize, total, 0, &writable);
	}
      else if (primary.num_entries != backup.num_entries
	       || primary.entry_size != backup.entry_size)
	writable = 0;
      if (err)
	goto out;
      if (!writable)
	grub_dprintf ("gptprio", "copies disagree on the entry array or the "
		      "rebuilt copy would not validate: not writing\n");
      else
	{
	  err = copy_write (disk, &backup, src->entries);
	  if (!err)
	    err = copy_write (disk, &primary, src->entries);
	  if (err)
	    goto out;
	}
    }

  /* The unique GUID's first three fields are little endian on disk.  */
  ent += ENT_UNIQUE;
  grub_snprintf (uuid, sizeof (uuid),
		 "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 get32 (ent), (unsigned) (ent[4] | (ent[5] << 8)),
		 (unsigned) (ent[6] | (ent[7] << 8)), ent[8], ent[9], ent[10],
		 ent[11], ent[12], ent[13], ent[14], ent[15]);
  device = grub_xasprintf ("%s,gpt%u", name, (unsigned) best + 1);
  if (!device)
    {
      err = grub_errno;
      goto out;
    }
  err = grub_env_set (state[0].arg, device);
  if (!err)
    err = grub_env_set (state[1].arg, uuid);

out:
  copy_free (&primary);
  copy_free (&backup);
  if (disk)
    grub_disk_close (disk);
  grub_free (device);
  grub_free (name);
  return err;
}

static struct grub_partition_map backup_partition_map;

/* Lists the partitions of the backup copy when only the backup validates.  */
static grub_err_t
backup_iterate (grub_disk_t disk, grub_partition_iterate_hook_t hook,
		void *hook_data)
{
  struct gpt_copy primary = { .what = "primary" };
  struct gpt_copy backup = { .what = "backup" };
  struct grub_partition part;
  grub_uint64_t total = logical_sectors (disk);
  unsigned shift = disk->log_sector_size - GRUB_DISK_SECTOR_BITS;
  grub_err_t err;
  grub_uint32_t i;

  if (disk->log_sector_size < GRUB_DISK_SECTOR_BITS
      || disk->log_sector_size > 12
      || total == GRUB_DISK_SIZE_UNKNOWN || total < 3)
    return grub_error (GRUB_ERR_BAD_PART_TABLE, "gptprio: no backup GPT");

  err = copy_read (disk, &primary, 1, total - 1, total, 1);
  if (!err && primary.valid)
    err = grub_error (GRUB_ERR_BAD_PART_TABLE,
		      "gptprio: primary GPT valid, left to part_gpt");
  if (!err)
    err = copy_read (disk, &backup, total - 1, 1, total, 0);
  if (!err && !backup.valid)
    err = grub_error (GRUB_ERR_BAD_PART_TABLE, "gptprio: no valid GPT copy");
  if (err)
    goto out;

  grub_dprintf ("gptprio", "partitions from the backup GPT\n");
  for (i = 0; i < backup.num_entries; i++)
    {
      const grub_uint8_t *ent = backup.entries
	+ (grub_size_t) i * backup.entry_size;
      grub_size_t at = (grub_size_t) i * backup.entry_size;
      grub_uint64_t first = get64 (ent + 32), last = get64 (ent + 40);
      int used = 0, k;

      for (k = 0; k < 16; k++)
	used |= ent[ENT_TYPE + k];
      if (!used || last < first)
	continue;
      part.start = first << shift;
      part.len = (last - first + 1) << shift;
      part.offset = grub_disk_from_native_sector (disk, backup.entries_lba)
	+ at / GRUB_DISK_SECTOR_SIZE;
      part.index = at % GRUB_DISK_SECTOR_SIZE;
      part.number = i;
      part.partmap = &backup_partition_map;
      part.parent = disk->partition;
      part.msdostype = 0;
      if (hook (disk, &part, hook_data))
	{
	  err = grub_errno;
	  break;
	}
    }

out:
  copy_free (&primary);
  copy_free (&backup);
  return err;
}

static struct grub_partition_map backup_partition_map = {
  .name = "gpt",
  .iterate = backup_iterate,
};

static grub_extcmd_t cmd_next;

GRUB_MOD_INIT (gptprio)
{
  grub_partition_map_register (&backup_partition_map);
  cmd_next = grub_register_extcmd ("gptprio.next", grub_cmd_next, 0,
				   N_("-d DEVVAR -u UUIDVAR [DISK]"),
				   N_("Choose the USR partition to boot by GPT "
				      "priority, tries and successful "
				      "attributes; decrement its tries."),
				   options);
}

GRUB_MOD_FINI (gptprio)
{
  grub_unregister_extcmd (cmd_next);
  grub_partition_map_unregister (&backup_partition_map);
}
