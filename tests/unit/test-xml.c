/*
 * test-xml: the backup, checkpoint and domain XML of agent/nj-xml.c.
 *
 * Built documents are compared byte for byte with golden files in
 * $NJ_GOLDEN_DIR (tests/golden); NJ_REGENERATE_GOLDEN=1 rewrites them
 * instead (then read the diff before committing it).  The inputs to the
 * parsers in that directory, libvirt-*.xml, are real libvirt 9.0 output
 * (virsh dumpxml, backup-dumpxml, checkpoint-dumpxml --size) and are never
 * rewritten.
 *
 * Every built document, and every input fixture that libvirt's schema
 * describes, is also checked with virt-xml-validate when it is on PATH;
 * when it is not, the test says so and runs the rest.  The same tool is
 * used to confirm that the checkpoint names nj_xml_checkpoint refuses are
 * the ones libvirt's schema refuses.
 *
 * The escaping round trips are checked with libxml2 directly, not with
 * the parsers under test.
 */
#include "nj-test.h"
#include "nj-util.h"
#include "nj-xml.h"

#include <errno.h>
#include <fcntl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TRICKY "\"quotes\" & <tags> 'apostrophes' Ünïcødé ☃"

static const char *golden_dir;
static bool regenerate;
static char *tmpdir;
static char *validator; /* virt-xml-validate, or NULL */

/* ---- files ---- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        nj_error_errno(errno, "open '%s'", path);
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = nj_malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = nj_realloc_array(buf, cap, 1);
        }
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return nj_error_errno(errno, "create '%s'", path);
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len;
    if (fclose(f) != 0 || !ok)
        return nj_error("write '%s' failed", path);
    return 0;
}

static char *golden_path(const char *name)
{
    return nj_asprintf("%s/%s", golden_dir, name);
}

static char *fixture(const char *name)
{
    NJ_CLEANUP_FREE char *path = golden_path(name);
    char *text = read_text(path);
    REQUIRE(text != NULL);
    return text;
}

/* Compare got with the golden file name, or rewrite it. */
static void check_golden(const char *name, const char *got)
{
    NJ_CLEANUP_FREE char *path = golden_path(name);
    if (regenerate) {
        REQUIRE(write_text(path, got) == 0);
        fprintf(stderr, "regenerated %s\n", path);
        return;
    }
    NJ_CLEANUP_FREE char *want = read_text(path);
    if (!want) {
        fprintf(stderr, "%s: %s (run with NJ_REGENERATE_GOLDEN=1 to "
                "create it)\n", name, nj_error_get());
        nj_test_failures++;
        return;
    }
    if (strcmp(want, got) != 0) {
        size_t i = 0;
        while (want[i] && want[i] == got[i])
            i++;
        fprintf(stderr, "%s: differs from the golden file at byte %zu\n"
                "--- golden\n%s--- built\n%s---\n", name, i, want, got);
        nj_test_failures++;
    }
}

/* ---- virt-xml-validate ---- */

static char *find_in_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    while (*path) {
        size_t n = strcspn(path, ":");
        char *cand = nj_asprintf("%.*s/%s", (int)n, n ? path : ".", prog);
        if (access(cand, X_OK) == 0)
            return cand;
        free(cand);
        path += n;
        if (*path == ':')
            path++;
    }
    return NULL;
}

/* Exit status of virt-xml-validate on xml against schema; its stdout is
 * dropped, its stderr kept for the log unless quiet. */
static int run_validator(const char *xml, const char *schema, bool quiet)
{
    static unsigned seq;
    NJ_CLEANUP_FREE char *file = nj_asprintf("%s/doc-%u.xml", tmpdir, seq++);
    REQUIRE(write_text(file, xml) == 0);
    fflush(NULL);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            if (quiet)
                dup2(fd, STDERR_FILENO);
        }
        execl(validator, validator, file, schema, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void check_valid(const char *name, const char *xml, const char *schema)
{
    if (!validator)
        return;
    if (run_validator(xml, schema, true) != 0) {
        run_validator(xml, schema, false); /* again, for its message */
        fprintf(stderr, "%s: virt-xml-validate %s refused it:\n%s", name,
                schema, xml);
        nj_test_failures++;
    }
}

/* ---- independent reading of built XML ---- */

/* The string value of expr in xml, by libxml2 alone; a new string. */
static char *xpath_value(const char *xml, const char *expr)
{
    xmlDocPtr doc = xmlReadMemory(xml, (int)strlen(xml), NULL, NULL,
                                  XML_PARSE_NONET);
    REQUIRE(doc != NULL);
    xmlXPathContextPtr ctx = xmlXPathNewContext(doc);
    REQUIRE(ctx != NULL);
    xmlXPathObjectPtr o =
        xmlXPathEvalExpression((const xmlChar *)expr, ctx);
    REQUIRE(o != NULL);
    xmlChar *s = xmlXPathCastToString(o);
    char *r = nj_strdup((const char *)s);
    xmlFree(s);
    xmlXPathFreeObject(o);
    xmlXPathFreeContext(ctx);
    xmlFreeDoc(doc);
    return r;
}

static void check_xpath(const char *xml, const char *expr, const char *want)
{
    NJ_CLEANUP_FREE char *got = xpath_value(xml, expr);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "%s: got '%s', want '%s'\n", expr, got, want);
        nj_test_failures++;
    }
}

/* ---- building: golden files ---- */

static void built(const char *golden, const char *schema, char *xml)
{
    REQUIRE(xml != NULL);
    check_golden(golden, xml);
    check_valid(golden, xml, schema);
    free(xml);
}

static void test_backup_golden(void)
{
    /* A full: two qcow2 disks, a raw disk, a cdrom left out. */
    const struct nj_backup_disk_spec full[] = {
        {"vda", true, false, "/var/lib/nightjar/job-1/vda.scratch"},
        {"vdb", true, false, "/var/lib/nightjar/job-1/vdb.scratch"},
        {"vdc", true, true, "/var/lib/nightjar/job-1/vdc.scratch"},
        {"sda", false, false, NULL},
    };
    built("backup-full.xml", "domainbackup",
          nj_xml_backup(NULL, "/run/nightjar/job-1/nbd.sock", full,
                        NJ_ARRAY_SIZE(full)));

    /* An incremental: one disk incremental, a qcow2 disk added since the
     * checkpoint and a raw disk in full, two disks left out. */
    const struct nj_backup_disk_spec inc[] = {
        {"vda", true, false, "/var/lib/nightjar/job 2/vda.scratch"},
        {"vdb", true, true, "/var/lib/nightjar/job 2/vdb.scratch"},
        {"vdc", true, true, "/var/lib/nightjar/job 2/vdc.scratch"},
        {"vdd", false, false, NULL},
        {"fda", false, true, "/ignored/when/not/backed/up"},
    };
    built("backup-inc-mixed.xml", "domainbackup",
          nj_xml_backup("nj-0001.full", "/run/nightjar/job 2/nbd.sock", inc,
                        NJ_ARRAY_SIZE(inc)));

    /* Paths carrying every character that needs escaping. */
    const char *sock = "/tmp/nj backup " TRICKY "/nbd.sock";
    const char *scratch = "/tmp/nj backup " TRICKY "/vda & 'x'.scratch";
    const struct nj_backup_disk_spec tricky[] = {
        {"vda", true, false, scratch},
    };
    char *xml = nj_xml_backup("a_b-c.d", sock, tricky, 1);
    REQUIRE(xml != NULL);
    check_xpath(xml, "string(/domainbackup/server/@socket)", sock);
    check_xpath(xml, "string(/domainbackup/disks/disk/scratch/@file)",
                scratch);
    check_xpath(xml, "string(/domainbackup/incremental)", "a_b-c.d");
    built("backup-tricky.xml", "domainbackup", xml);

    /* No disk list, no scratch: libvirt picks the disks. */
    built("backup-no-disks.xml", "domainbackup",
          nj_xml_backup(NULL, "/run/nightjar/nbd.sock", NULL, 0));
}

static void test_checkpoint_golden(void)
{
    const struct nj_checkpoint_disk_spec disks[] = {
        {"vda", true}, {"vdb", false}, {"vdc", true},
    };
    built("checkpoint-basic.xml", "domaincheckpoint",
          nj_xml_checkpoint("nj-0002.inc", "nightjar incremental backup",
                            disks, NJ_ARRAY_SIZE(disks)));

    const char *desc = "backup of " TRICKY " > ]]> \ttab\nsecond line\r\n";
    char *xml = nj_xml_checkpoint("nj-20240229T235959Z.a-b_c", desc, disks,
                                  NJ_ARRAY_SIZE(disks));
    REQUIRE(xml != NULL);
    check_xpath(xml, "string(/domaincheckpoint/description)", desc);
    built("checkpoint-tricky.xml", "domaincheckpoint", xml);

    built("checkpoint-minimal.xml", "domaincheckpoint",
          nj_xml_checkpoint(NULL, NULL, NULL, 0));
}

/* ---- building: refusals ---- */

static void expect_error(const char *what, const void *result,
                         const char *needle)
{
    if (result != NULL) {
        fprintf(stderr, "%s: accepted, expected an error\n", what);
        nj_test_failures++;
        free((void *)result);
        return;
    }
    if (!strstr(nj_error_get(), needle)) {
        fprintf(stderr, "%s: error '%s' does not mention '%s'\n", what,
                nj_error_get(), needle);
        nj_test_failures++;
    }
}

static void test_build_refusals(void)
{
    const struct nj_checkpoint_disk_spec one[] = {{"vda", true}};
    expect_error("name with a space",
                 nj_xml_checkpoint("a b", NULL, one, 1),
                 "not a valid libvirt checkpoint name");
    expect_error("name with a slash",
                 nj_xml_checkpoint("a/b", NULL, one, 1), "'a/b'");
    expect_error("name starting with a dot",
                 nj_xml_checkpoint(".a", NULL, one, 1), "'.a'");
    expect_error("empty name", nj_xml_checkpoint("", NULL, one, 1),
                 "checkpoint name");
    expect_error("non-ASCII name",
                 nj_xml_checkpoint("Ünïcødé", NULL, one, 1),
                 "checkpoint name");
    expect_error("control character",
                 nj_xml_checkpoint("a", "bell\a", one, 1),
                 "checkpoint description is not valid UTF-8");
    expect_error("invalid UTF-8",
                 nj_xml_checkpoint("a", "\xc3\x28", one, 1),
                 "checkpoint description");
    expect_error("overlong UTF-8",
                 nj_xml_checkpoint("a", "\xc0\xaf", one, 1),
                 "checkpoint description");
    expect_error("UTF-8 surrogate",
                 nj_xml_checkpoint("a", "\xed\xa0\x80", one, 1),
                 "checkpoint description");
    expect_error("U+FFFF", nj_xml_checkpoint("a", "\xef\xbf\xbf", one, 1),
                 "checkpoint description");
    expect_error("truncated UTF-8", nj_xml_checkpoint("a", "\xe2\x98", one, 1),
                 "checkpoint description");
    const struct nj_checkpoint_disk_spec twice[] = {{"vda", true},
                                                    {"vda", false}};
    expect_error("checkpoint disk twice",
                 nj_xml_checkpoint("a", NULL, twice, 2), "listed twice");

    const struct nj_backup_disk_spec b[] = {{"vda", true, false, "/s"}};
    expect_error("relative socket", nj_xml_backup(NULL, "nbd.sock", b, 1),
                 "backup socket 'nbd.sock' is not an absolute path");
    expect_error("no socket", nj_xml_backup(NULL, NULL, b, 1),
                 "backup socket");
    expect_error("bad incremental", nj_xml_backup("x y", "/s", b, 1),
                 "incremental checkpoint 'x y'");
    const struct nj_backup_disk_spec rel[] = {{"vda", true, false, "s"}};
    expect_error("relative scratch", nj_xml_backup(NULL, "/s", rel, 1),
                 "backup disk 'vda': scratch file 's'");
    const struct nj_backup_disk_spec dup[] = {{"vda", true, false, "/a"},
                                              {"vda", false, false, NULL}};
    expect_error("backup disk twice", nj_xml_backup(NULL, "/s", dup, 2),
                 "'vda' is listed twice");
    const struct nj_backup_disk_spec none[] = {{"", true, false, "/a"}};
    expect_error("no target", nj_xml_backup(NULL, "/s", none, 1),
                 "no target");
}

/*
 * The names nj_xml_checkpoint accepts are exactly those libvirt's schema
 * accepts: each name is put into a checkpoint document built here with
 * libxml2 and shown to virt-xml-validate.
 */
static void test_names_against_schema(void)
{
    if (!validator)
        return;
    static const char *const names[] = {
        "nj-0001", "a.b", "_x", "-x", "x.", "0", ".hidden", "a b", "a/b",
        "a\"b", "a&b", "Ünïcødé", "x\ny", "a:b", "a+b",
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(names); i++) {
        xmlDocPtr doc = xmlNewDoc((const xmlChar *)"1.0");
        xmlNodePtr root =
            xmlNewDocNode(doc, NULL, (const xmlChar *)"domaincheckpoint", NULL);
        xmlDocSetRootElement(doc, root);
        xmlNewTextChild(root, NULL, (const xmlChar *)"name",
                        (const xmlChar *)names[i]);
        xmlChar *mem = NULL;
        int len = 0;
        xmlDocDumpMemoryEnc(doc, &mem, &len, "UTF-8");
        bool schema_ok = run_validator((const char *)mem,
                                       "domaincheckpoint", true) == 0;
        xmlFree(mem);
        xmlFreeDoc(doc);
        char *ours = nj_xml_checkpoint(names[i], NULL, NULL, 0);
        if ((ours != NULL) != schema_ok) {
            fprintf(stderr, "checkpoint name '%s': nightjar %s it, libvirt's "
                    "schema %s it\n", names[i], ours ? "accepts" : "refuses",
                    schema_ok ? "accepts" : "refuses");
            nj_test_failures++;
        }
        free(ours);
    }
}

/* ---- parsing the domain ---- */

struct want_disk {
    const char *target, *device, *type, *format, *source, *protocol;
    enum nj_disk_kind kind;
    const char *reason;
};

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_disk(const struct nj_domain_disk *d,
                       const struct want_disk *w)
{
    bool ok = str_eq(d->target, w->target) && str_eq(d->device, w->device) &&
              str_eq(d->type, w->type) && str_eq(d->format, w->format) &&
              str_eq(d->source, w->source) &&
              str_eq(d->protocol, w->protocol) && d->kind == w->kind &&
              str_eq(d->skip_reason, w->reason);
    if (!ok) {
        fprintf(stderr, "disk '%s': got device %s type %s format %s source "
                "%s protocol %s kind %d reason %s\n", w->target,
                d->device, d->type, d->format ? d->format : "(null)",
                d->source ? d->source : "(null)",
                d->protocol ? d->protocol : "(null)", (int)d->kind,
                d->skip_reason ? d->skip_reason : "(null)");
        nj_test_failures++;
    }
}

static void test_domain_mixed(void)
{
    NJ_CLEANUP_FREE char *xml = fixture("libvirt-domain-mixed.xml");
    check_valid("libvirt-domain-mixed.xml", xml, "domain");
    struct nj_domain_info *d = nj_domain_info_parse(xml);
    REQUIRE(d != NULL);
    CHECK(strcmp(d->name, "nj \"quoted\" & <tag> 'apos' Ünïcødé ☃") == 0);
    CHECK(strcmp(d->uuid, "6f1d7c3e-2b4a-4c5d-9e8f-0a1b2c3d4e5f") == 0);

    /* In libvirt's order (it sorts disks by bus on define). */
    static const struct want_disk want[] = {
        {"vda", "disk", "file", "qcow2",
         "/var/lib/nightjar test/system & \"root\".qcow2", NULL,
         NJ_DISK_QCOW2, NULL},
        {"vdb", "disk", "file", "qcow2", "/var/lib/nightjar/data-Ünïcødé.qcow2",
         NULL, NJ_DISK_QCOW2, NULL},
        {"vdc", "disk", "block", "raw", "/dev/vg0/db", NULL, NJ_DISK_RAW, NULL},
        {"vdd", "disk", "file", "qcow2", "/var/lib/nightjar/golden.qcow2", NULL,
         NJ_DISK_SKIP, "read-only"},
        {"vde", "disk", "file", "raw", "/var/lib/nightjar/cluster.raw", NULL,
         NJ_DISK_SKIP, "shareable"},
        {"vdf", "disk", "network", "raw", "pool/image", "rbd", NJ_DISK_SKIP,
         "network disk"},
        {"vdg", "disk", "file", "vmdk", "/var/lib/nightjar/legacy.vmdk", NULL,
         NJ_DISK_SKIP, "format 'vmdk' is not supported"},
        {"vdh", "disk", "file", "qcow2", "/var/lib/nightjar/scratch.qcow2",
         NULL, NJ_DISK_SKIP, "transient"},
        {"vdi", "disk", "volume", "qcow2", "default/vol1.qcow2", NULL,
         NJ_DISK_SKIP, "storage volume"},
        {"vdj", "disk", "file", "raw", "/var/lib/nightjar/noformat.img", NULL,
         NJ_DISK_RAW, NULL},
        {"sda", "cdrom", "file", "raw", "/srv/iso/install.iso", NULL,
         NJ_DISK_SKIP, "cdrom"},
        {"sdb", "cdrom", "file", "raw", NULL, NULL, NJ_DISK_SKIP, "cdrom"},
        {"fda", "floppy", "file", "raw", "/srv/floppy.img", NULL, NJ_DISK_SKIP,
         "floppy"},
        {"sdc", "lun", "block", "raw", "/dev/sdz", NULL, NJ_DISK_SKIP, "lun"},
    };
    CHECK(d->ndisks == NJ_ARRAY_SIZE(want));
    for (size_t i = 0; i < NJ_MIN(d->ndisks, NJ_ARRAY_SIZE(want)); i++)
        check_disk(&d->disks[i], &want[i]);
    nj_domain_info_free(d);
}

/* A domain with one disk element given as text. */
static struct nj_domain_info *one_disk(const char *disk)
{
    NJ_CLEANUP_FREE char *xml = nj_asprintf(
        "<domain type='kvm'><name>d</name><uuid>u</uuid>"
        "<devices>%s</devices></domain>", disk);
    return nj_domain_info_parse(xml);
}

static void test_domain_small(void)
{
    static const struct {
        const char *xml;
        struct want_disk want;
    } cases[] = {
        /* No driver type: raw, as libvirt makes it. */
        {"<disk type='file' device='disk'><source file='/a'/>"
         "<target dev='vda'/></disk>",
         {"vda", "disk", "file", NULL, "/a", NULL, NJ_DISK_RAW, NULL}},
        /* No device or type attribute: a file disk. */
        {"<disk><driver type='qcow2'/><source file='/a'/>"
         "<target dev='vda'/></disk>",
         {"vda", "disk", "file", "qcow2", "/a", NULL, NJ_DISK_QCOW2, NULL}},
        /* qcow2 on a block device. */
        {"<disk type='block' device='disk'><driver type='qcow2'/>"
         "<source dev='/dev/vg/lv'/><target dev='vda'/></disk>",
         {"vda", "disk", "block", "qcow2", "/dev/vg/lv", NULL, NJ_DISK_QCOW2,
          NULL}},
        /* The backing chain is not the disk's source. */
        {"<disk type='file'><driver type='qcow2'/>"
         "<backingStore type='file'><format type='raw'/>"
         "<source file='/base'/></backingStore><target dev='vda'/></disk>",
         {"vda", "disk", "file", "qcow2", NULL, NULL, NJ_DISK_SKIP,
          "no source"}},
        {"<disk type='file'><driver type='qcow2'/><source/>"
         "<target dev='vda'/></disk>",
         {"vda", "disk", "file", "qcow2", NULL, NULL, NJ_DISK_SKIP,
          "no source"}},
        {"<disk type='nvme' device='disk'><driver type='raw'/>"
         "<source type='pci'/><target dev='vda'/></disk>",
         {"vda", "disk", "nvme", "raw", NULL, NULL, NJ_DISK_SKIP,
          "nvme disk"}},
        {"<disk type='network'><driver type='raw'/>"
         "<source protocol='nbd' name='exp'/><target dev='vda'/></disk>",
         {"vda", "disk", "network", "raw", "exp", "nbd", NJ_DISK_SKIP,
          "network disk"}},
        {"<disk type='file'><driver type='qed'/><source file='/q'/>"
         "<target dev='vda'/></disk>",
         {"vda", "disk", "file", "qed", "/q", NULL, NJ_DISK_SKIP,
          "format 'qed' is not supported"}},
        {"<disk type='file'><driver type='weird'/><source file='/q'/>"
         "<target dev='vda'/></disk>",
         {"vda", "disk", "file", "weird", "/q", NULL, NJ_DISK_SKIP,
          "format is neither qcow2 nor raw"}},
        /* A cdrom is a cdrom before it is read-only. */
        {"<disk device='cdrom'><driver type='qcow2'/><source file='/c'/>"
         "<target dev='hdc'/><readonly/></disk>",
         {"hdc", "cdrom", "file", "qcow2", "/c", NULL, NJ_DISK_SKIP, "cdrom"}},
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(cases); i++) {
        struct nj_domain_info *d = one_disk(cases[i].xml);
        CHECK(d != NULL);
        if (!d)
            continue;
        CHECK(d->ndisks == 1);
        if (d->ndisks == 1)
            check_disk(&d->disks[0], &cases[i].want);
        nj_domain_info_free(d);
    }

    /* A domain with no devices has no disks. */
    struct nj_domain_info *d =
        nj_domain_info_parse("<domain><name>x</name><uuid>u</uuid></domain>");
    CHECK(d != NULL && d->ndisks == 0);
    nj_domain_info_free(d);
}

/* ---- parsing the backup job and checkpoints ---- */

static void test_backup_exports(void)
{
    /* Not shown to virt-xml-validate: libvirt 9.0 writes index='N' on
     * each disk, which its own domainbackup schema does not allow. */
    NJ_CLEANUP_FREE char *xml = fixture("libvirt-backup-job-inc.xml");
    char *sock = NULL;
    struct nj_backup_export *e = NULL;
    int n = nj_xml_backup_exports(xml, &sock, &e);
    REQUIRE(n == 2);
    CHECK(strcmp(sock, "/tmp/njxml/nbd sock Ünïcødé/"
                       "nbd & \"x\" <y> 'z'.sock") == 0);
    CHECK(strcmp(e[0].target, "vda") == 0);
    CHECK(strcmp(e[0].exportname, "vda") == 0);
    CHECK(e[0].exportbitmap && strcmp(e[0].exportbitmap, "backup-vda") == 0);
    CHECK(strcmp(e[1].target, "vdb") == 0);
    CHECK(strcmp(e[1].exportname, "vdb") == 0);
    CHECK(e[1].exportbitmap == NULL);
    nj_backup_exports_free(e, (size_t)n);
    free(sock);

    /* No disk backed up: an empty array, not an error. */
    n = nj_xml_backup_exports(
        "<domainbackup mode='pull'><server transport='unix' socket='/s'/>"
        "<disks><disk name='vda' backup='no'/></disks></domainbackup>",
        &sock, &e);
    CHECK(n == 0 && e != NULL && sock && strcmp(sock, "/s") == 0);
    nj_backup_exports_free(e, 0);
    free(sock);

    static const struct {
        const char *xml, *needle;
    } bad[] = {
        {"<domainbackup><disks/></domainbackup>", "mode is 'push'"},
        {"<domainbackup mode='pull'><server name='localhost' port='10809'/>"
         "</domainbackup>",
         "not on a unix socket (transport 'tcp')"},
        {"<domainbackup mode='pull'><server transport='unix' socket='/s'/>"
         "<disks><disk name='vda' backup='yes'/></disks></domainbackup>",
         "disk 'vda' has no exportname"},
        {"<domainbackup mode='pull'><server transport='unix' socket='/s'/>"
         "<disks><disk name='vda' exportname='vda'/><disk backup='yes' "
         "exportname='x'/></disks></domainbackup>",
         "disk 1 has no name"},
        {"<domaincheckpoint/>",
         "root element is <domaincheckpoint>, expected <domainbackup>"},
    };
    struct nj_backup_export sentinel;
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        sock = (char *)"untouched";
        e = &sentinel;
        CHECK(nj_xml_backup_exports(bad[i].xml, &sock, &e) == -1);
        CHECK(sock == NULL && e == NULL);
        if (!strstr(nj_error_get(), bad[i].needle)) {
            fprintf(stderr, "backup job %zu: error '%s' lacks '%s'\n", i,
                    nj_error_get(), bad[i].needle);
            nj_test_failures++;
        }
    }
}

static void test_checkpoint_dumps(void)
{
    NJ_CLEANUP_FREE char *full = fixture("libvirt-checkpoint-full.xml");
    check_valid("libvirt-checkpoint-full.xml", full, "domaincheckpoint");
    struct nj_checkpoint_info *c = nj_checkpoint_info_parse(full);
    REQUIRE(c != NULL);
    CHECK(strcmp(c->name, "nj-0001.full") == 0);
    CHECK(c->parent == NULL);
    CHECK(c->description &&
          strcmp(c->description, "full backup of \"vm\" & friends <1> 'ok' "
                                 "Ünïcødé ☃") == 0);
    CHECK(c->creation_time == 1795306523);
    REQUIRE(c->ndisks == 3); /* not the disks of the <domain> inside */
    CHECK(strcmp(c->disks[0].target, "vda") == 0 && c->disks[0].bitmap);
    CHECK(strcmp(c->disks[0].bitmap_name, "nj-0001.full") == 0);
    CHECK(c->disks[0].size == 1048576);
    CHECK(strcmp(c->disks[1].target, "vdb") == 0 && !c->disks[1].bitmap);
    CHECK(c->disks[1].bitmap_name == NULL && c->disks[1].size == -1);
    CHECK(strcmp(c->disks[2].target, "vdc") == 0 && c->disks[2].bitmap);
    CHECK(c->disks[2].size == 0);
    nj_checkpoint_info_free(c);

    NJ_CLEANUP_FREE char *inc = fixture("libvirt-checkpoint-inc.xml");
    check_valid("libvirt-checkpoint-inc.xml", inc, "domaincheckpoint");
    c = nj_checkpoint_info_parse(inc);
    REQUIRE(c != NULL);
    CHECK(strcmp(c->name, "nj-0002.inc") == 0);
    CHECK(c->parent && strcmp(c->parent, "nj-0001.full") == 0);
    CHECK(c->description == NULL);
    CHECK(c->creation_time == 1795306529);
    CHECK(c->ndisks == 3);
    nj_checkpoint_info_free(c);

    /* Without SIZE and creationTime. */
    c = nj_checkpoint_info_parse(
        "<domaincheckpoint><name>a</name><description/>"
        "<disks><disk name='vda'/></disks></domaincheckpoint>");
    REQUIRE(c != NULL);
    CHECK(c->creation_time == -1 && c->ndisks == 1);
    CHECK(c->description && strcmp(c->description, "") == 0);
    CHECK(c->disks[0].bitmap && c->disks[0].size == -1);
    nj_checkpoint_info_free(c);

    static const struct {
        const char *xml, *needle;
    } bad[] = {
        {"<domaincheckpoint><disks/></domaincheckpoint>", "no <name>"},
        {"<domaincheckpoint><name>a</name><creationTime>soon</creationTime>"
         "</domaincheckpoint>",
         "checkpoint 'a': creationTime 'soon' is not a number"},
        {"<domaincheckpoint><name>a</name><disks><disk name='vda' "
         "size='-1'/></disks></domaincheckpoint>",
         "checkpoint 'a': disk 'vda': size '-1' is not a number"},
        {"<domaincheckpoint><name>a</name><disks><disk name='vda' "
         "size='99999999999999999999'/></disks></domaincheckpoint>",
         "is not a number"},
        {"<domaincheckpoint><name>a</name><disks><disk name='vda' "
         "checkpoint='external'/></disks></domaincheckpoint>",
         "unknown checkpoint mode 'external'"},
        {"<domaincheckpoint><name>a</name><disks><disk/></disks>"
         "</domaincheckpoint>",
         "disk 0 has no name"},
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        c = nj_checkpoint_info_parse(bad[i].xml);
        CHECK(c == NULL);
        nj_checkpoint_info_free(c);
        if (!strstr(nj_error_get(), bad[i].needle)) {
            fprintf(stderr, "checkpoint %zu: error '%s' lacks '%s'\n", i,
                    nj_error_get(), bad[i].needle);
            nj_test_failures++;
        }
    }
}

/* What nj_xml_checkpoint builds, nj_checkpoint_info_parse reads back. */
static void test_checkpoint_round_trip(void)
{
    const char *desc = TRICKY " \t<>&\"' \n\r\n ]]> end";
    const struct nj_checkpoint_disk_spec disks[] = {
        {"vda", true}, {"sdb", false}, {"vdz", true},
    };
    char *xml = nj_xml_checkpoint("round-trip_1.x", desc, disks, 3);
    REQUIRE(xml != NULL);
    struct nj_checkpoint_info *c = nj_checkpoint_info_parse(xml);
    REQUIRE(c != NULL);
    CHECK(strcmp(c->name, "round-trip_1.x") == 0);
    CHECK(c->description && strcmp(c->description, desc) == 0);
    CHECK(c->parent == NULL && c->creation_time == -1);
    REQUIRE(c->ndisks == 3);
    for (size_t i = 0; i < 3; i++) {
        CHECK(strcmp(c->disks[i].target, disks[i].target) == 0);
        CHECK(c->disks[i].bitmap == disks[i].bitmap);
        CHECK(c->disks[i].bitmap_name == NULL && c->disks[i].size == -1);
    }
    nj_checkpoint_info_free(c);
    free(xml);

    /* Building is deterministic. */
    char *a = nj_xml_checkpoint("x", desc, disks, 3);
    char *b = nj_xml_checkpoint("x", desc, disks, 3);
    CHECK(a && b && strcmp(a, b) == 0);
    free(a);
    free(b);
}

/* ---- malformed input ---- */

static void test_malformed(void)
{
    static const struct {
        const char *xml, *needle;
    } bad[] = {
        {"", "Document is empty"},
        {"not xml at all", "line 1: Start tag expected"},
        {"<domain><name>x</name>", "line 1:"},
        {"<domain><name>x</nam></domain>", "mismatch"},
        {"<domain>\n<name a='1' a='2'>x</name></domain>", "line 2:"},
        {"<domain><name>x &bogus;</name></domain>", "bogus"},
        {"<domain><name>\xff\xfe</name></domain>", "line 1:"},
        {"<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY e 'x'>]>"
         "<domain><name>&e;</name></domain>",
         "document type declaration is not allowed"},
        {"<domaincheckpoint/>",
         "root element is <domaincheckpoint>, expected <domain>"},
        {"<x:domain xmlns:x='urn:x'><name>a</name></x:domain>",
         "expected <domain>"},
        {"<domain><uuid>u</uuid></domain>", "no <name>"},
        {"<domain><name>n</name></domain>", "domain XML of 'n': no <uuid>"},
        {"<domain><name>n</name><uuid>u</uuid><devices><disk type='file'>"
         "<source file='/a'/></disk></devices></domain>",
         "domain XML of 'n': disk 0 has no target dev"},
    };
    for (size_t i = 0; i < NJ_ARRAY_SIZE(bad); i++) {
        struct nj_domain_info *d = nj_domain_info_parse(bad[i].xml);
        CHECK(d == NULL);
        nj_domain_info_free(d);
        const char *err = nj_error_get();
        if (!strstr(err, bad[i].needle) ||
            (strncmp(err, "domain XML", 10) != 0)) {
            fprintf(stderr, "malformed %zu: error '%s' lacks '%s'\n", i, err,
                    bad[i].needle);
            nj_test_failures++;
        }
        CHECK(err[strlen(err) - 1] != '\n');
    }
    CHECK(nj_domain_info_parse(NULL) == NULL);
    CHECK(strstr(nj_error_get(), "no document") != NULL);
    CHECK(nj_checkpoint_info_parse("<domaincheckpoint>") == NULL);
    CHECK(strncmp(nj_error_get(), "checkpoint XML: line 1:", 23) == 0);
    char *sock = NULL;
    struct nj_backup_export *e = NULL;
    CHECK(nj_xml_backup_exports("<domainbackup", &sock, &e) == -1);
    CHECK(strncmp(nj_error_get(), "backup job XML: line 1:", 23) == 0);

    /* Prefixes of a real document, up to its last '>': errors, no crash. */
    NJ_CLEANUP_FREE char *xml = fixture("libvirt-domain-mixed.xml");
    size_t len = (size_t)(strrchr(xml, '>') - xml), accepted = 0;
    for (size_t cut = 0; cut < len; cut += cut < 64 || len - cut < 64 ? 1 : 7) {
        char *part = nj_malloc(cut + 1);
        memcpy(part, xml, cut);
        part[cut] = '\0';
        struct nj_domain_info *d = nj_domain_info_parse(part);
        accepted += d != NULL;
        nj_domain_info_free(d);
        free(part);
    }
    CHECK(accepted == 0);
}

int main(void)
{
    golden_dir = getenv("NJ_GOLDEN_DIR");
    if (!golden_dir) {
        fprintf(stderr, "test-xml: set NJ_GOLDEN_DIR to tests/golden\n");
        return 1;
    }
    const char *regen = getenv("NJ_REGENERATE_GOLDEN");
    regenerate = regen && strcmp(regen, "1") == 0;
    tmpdir = nj_test_tmpdir("xml");
    validator = find_in_path("virt-xml-validate");
    if (!validator)
        fprintf(stderr, "test-xml: virt-xml-validate not found on PATH "
                "(package libvirt-clients): schema checks not run\n");

    test_backup_golden();
    test_checkpoint_golden();
    test_build_refusals();
    test_names_against_schema();
    test_domain_mixed();
    test_domain_small();
    test_backup_exports();
    test_checkpoint_dumps();
    test_checkpoint_round_trip();
    test_malformed();

    nj_test_rmtree(tmpdir);
    free(tmpdir);
    free(validator);
    return nj_test_done("test-xml");
}
