/* The command line's INI config (src/cli/config.c): defaults, files, overrides, errors that
 * name file, line and key, dumps that load back, list keys over continuation lines, and the
 * special grammars (class lists, sweep override groups). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli/config.h"
#include "util.h"

/* ---- config file, overrides, dump --------------------------------------------------------------------------------- */

static const char *write_ini(const char *name, const char *text) {
    const char *path = ct_test_path(name);
    ct_test_write_file(path, text, strlen(text));
    return path;
}

START_TEST(config_defaults) {
    ct_config c;
    ct_config_defaults(&c);
    ck_assert_str_eq(c.data.dir, "/usr/share/datasets/fashion-mnist");
    ck_assert_int_eq(c.data.format, CT_CFG_FORMAT_IDX);
    ck_assert_double_eq(c.data.mean, 0.2860);
    ck_assert_double_eq(c.data.std, 0.3530);
    ck_assert_int_eq(c.data.augment, CT_CFG_AUGMENT_NONE);
    ck_assert_int_eq(c.data.crop_pad, 2);
    ck_assert_str_eq(c.data.classes, "all");
    ck_assert_int_eq(c.data.per_class, 0);
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_MLP);
    ck_assert(!c.model.init_strict);
    ck_assert(c.model.bn_eval_when_frozen);
    ck_assert_double_eq(c.model.dropout, 0.25);
    ck_assert_double_eq(c.train.label_smoothing, 0);
    /* the ResNets' keys */
    ck_assert_int_eq(c.model.in_channels, 3);
    ck_assert_int_eq(c.model.num_classes, 0);
    ck_assert_int_eq(c.model.stem, CT_CFG_STEM_IMAGENET);
    ck_assert_int_eq(ct_config_apply_overrides(&c, "model.name=resnet50 model.stem=small model.num_classes=data"),
                     CT_OK);
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_RESNET50);
    ck_assert_int_eq(c.model.stem, CT_CFG_STEM_SMALL);
    ct_test_expect_error(ct_config_apply_overrides(&c, "model.stem=tiny"), CT_ERR_CONFIG, "model.stem", NULL);
    ct_test_expect_error(ct_config_apply_overrides(&c, "model.in_channels=0"), CT_ERR_CONFIG, "model.in_channels", NULL);
    ct_config_defaults(&c);
    ck_assert_int_eq(c.train.epochs, 10);
    ck_assert_int_eq(c.train.batch_size, 64);
    ck_assert_uint_eq(c.train.seed, 0);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(c.train.log_every, 100);
    ck_assert(c.train.drop_last);
    ck_assert_int_eq(c.train.eval_batch_size, 1000);
    ck_assert_int_eq(c.train.unfreeze_after, 0);
    ck_assert_double_eq(c.train.unfreeze_lr_scale, 0.1);
    ck_assert_int_eq(c.train.feature_cache, CT_CFG_CACHE_AUTO);
    ck_assert_int_eq(c.optim.kind, CT_OPTIM_ADAM);
    ck_assert_double_eq(c.optim.lr, 1e-3);
    ck_assert_double_eq(c.optim.momentum, 0.9);
    ck_assert(!c.optim.nesterov);
    ck_assert_double_eq(c.optim.weight_decay, 0);
    ck_assert_double_eq(c.optim.beta2, 0.999);
    ck_assert_double_eq(c.optim.eps, 1e-8);
    ck_assert_int_eq(c.schedule.name, CT_SCHED_NONE);
    ck_assert_int_eq(c.schedule.step_size, 5);
    ck_assert_double_eq(c.schedule.gamma, 0.1);
    ck_assert_str_eq(c.output.dir, "runs/default");
    ck_assert_int_eq(c.output.checkpoint_every, 1);
    ck_assert_int_eq(c.output.keep, 0);
    ck_assert_int_eq(c.dist.buffers, CT_BUFFERS_AVERAGE);
    ck_assert_double_eq(c.dist.bucket_mb, 25);
    ck_assert_double_eq(c.dist.first_bucket_mb, 1);
    ck_assert_int_eq(c.dist.shard, CT_SHARD_DROP);
    ck_assert_int_eq(c.sweep.group_size, 1);
    char buf[64];
    ck_assert_int_eq(ct_config_get(&c, "output.keep", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "all");
    ck_assert_int_eq(ct_config_get(&c, "optim.lr", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "0.001");
    ck_assert_int_eq(ct_config_get(&c, "optim.name", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "adam");
    ct_test_expect_error(ct_config_get(&c, "optim.nope", buf, sizeof buf), CT_ERR_CONFIG, "optim.nope",
                 NULL);
    ct_test_expect_error(ct_config_get(&c, "data.dir", buf, 4), CT_ERR_ARG, "data.dir", NULL);
}
END_TEST

/* train.preempt_signals: names with or without SIG, any case, duplicates once; "none"; an
 * unknown or uncatchable signal is an error naming the word. */
START_TEST(config_preempt_signals) {
    int sigs[8], n = -1;
    char why[256] = "";
    ck_assert(ct_config_signals("SIGterm, usr1,TERM", sigs, &n, why, sizeof why));
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(sigs[0], SIGTERM);
    ck_assert_int_eq(sigs[1], SIGUSR1);
    ck_assert(ct_config_signals("none", sigs, &n, why, sizeof why));
    ck_assert_int_eq(n, 0);
    ck_assert(!ct_config_signals(" , ", sigs, &n, why, sizeof why));
    ct_config c;
    ct_config_defaults(&c);
    ck_assert_str_eq(c.train.preempt_signals, "TERM,INT,USR1");
    ck_assert_int_eq(c.train.preempt_grace_s, 30);
    ck_assert_int_eq(c.output.checkpoint_every_steps, 0);
    ct_test_expect_error(ct_config_set(&c, "train.preempt_signals", "TERM,KILL"), CT_ERR_CONFIG,
                         "preempt_signals", "'KILL'", NULL);
    ck_assert_int_eq(ct_config_set(&c, "output.checkpoint_every_steps", "never"), CT_OK);
    ck_assert_int_eq(ct_config_set(&c, "train.preempt_grace_s", "-1"), CT_ERR_CONFIG);
}
END_TEST

START_TEST(config_file_and_overrides) {
    ct_test_make_tmpdir();
    const char *path = write_ini("run.ini",
                                 "; a comment\n"
                                 "[data]\n"
                                 "augment = crop_flip\n"
                                 "classes = 0-4\n"
                                 "[model]\n"
                                 "name = cnn\n"
                                 "layers = conv:32:3,relu,linear:10\n"
                                 "freeze = backbone.*\n"
                                 "init_strict = yes\n"
                                 "[train]\n"
                                 "epochs = 3\n"
                                 "batch_size = 32   ; inline comment\n"
                                 "seed = 18446744073709551615\n"
                                 "[optim]\n"
                                 "name = sgd\n"
                                 "lr = 0.05\n"
                                 "nesterov = 1\n"
                                 "[dist]\n"
                                 "buffers = broadcast\n");
    ct_config c;
    char *over[] = {"train.epochs=7", "optim.lr = 0.2", "resume=true", "dist.shard=pad"};
    ck_assert_msg(ct_config_load(&c, path, 4, over) == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(c.data.augment, CT_CFG_AUGMENT_CROP_FLIP);
    ck_assert_str_eq(c.data.classes, "0-4");
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_CNN);
    ck_assert_str_eq(c.model.layers, "conv:32:3,relu,linear:10");
    ck_assert_str_eq(c.model.freeze, "backbone.*");
    ck_assert(c.model.init_strict);
    ck_assert_int_eq(c.train.batch_size, 32);
    ck_assert_uint_eq(c.train.seed, UINT64_MAX);
    ck_assert_int_eq(c.optim.kind, CT_OPTIM_SGD);
    ck_assert(c.optim.nesterov);
    ck_assert_int_eq(c.dist.buffers, CT_BUFFERS_BROADCAST);
    /* overrides win over the file */
    ck_assert_int_eq(c.train.epochs, 7);
    ck_assert_double_eq(c.optim.lr, 0.2);
    ck_assert(c.train.resume);
    ck_assert_int_eq(c.dist.shard, CT_SHARD_PAD);
    /* untouched keys keep their defaults */
    ck_assert_int_eq(c.train.eval_batch_size, 1000);
    ck_assert_double_eq(c.optim.momentum, 0.9);
    ct_test_remove_tmpdir();
}
END_TEST

/* Every line ending reads the same: LF, CRLF (Windows) and a lone CR (old Mac), in a file
 * and in a string. A CR-only file used to be one long line that inih skipped, so the run
 * silently used the defaults. Line numbers in errors count CR-only lines too. */
START_TEST(config_line_endings) {
    ct_test_make_tmpdir();
    const char *eol[] = {"\n", "\r\n", "\r"};
    for (int k = 0; k < 3; k++) {
        char text[256];
        snprintf(text, sizeof text, "[train]%sepochs = 4%s%s[optim]%slr = 0.5%sname = sgd", eol[k], eol[k],
                 eol[k], eol[k], eol[k]);
        ct_config c;
        ct_config_defaults(&c);
        ck_assert_msg(ct_config_load_string(&c, text, "string") == CT_OK, "%s", ct_last_error());
        ck_assert_int_eq(c.train.epochs, 4);
        ck_assert_double_eq(c.optim.lr, 0.5);
        ck_assert_int_eq(c.optim.kind, CT_OPTIM_SGD);
        const char *path = write_ini("eol.ini", text);
        ck_assert_msg(ct_config_load(&c, path, 0, NULL) == CT_OK, "%s", ct_last_error());
        ck_assert_int_eq(c.train.epochs, 4);
        ck_assert_double_eq(c.optim.lr, 0.5);
        ck_assert_int_eq(c.optim.kind, CT_OPTIM_SGD);
        snprintf(text, sizeof text, "[train]%sepochs = 4%sbogus = 1%s", eol[k], eol[k], eol[k]);
        path = write_ini("eol.ini", text);
        ct_test_expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, "eol.ini:3", "bogus", NULL);
    }
    ct_test_remove_tmpdir();
}
END_TEST

/* One bad line in an otherwise valid file: the message names file, line, key and reason. */
static const struct {
    const char *text;
    const char *want[3];
} bad_ini[] = {
    {"[train]\nepochs = 3\nepoch = 4\n", {":3:", "train.epoch", "epochs"}},
    {"[trian]\nepochs = 3\n", {":2:", "[trian]", "sections:"}},
    {"[optim]\n\nlr = 1e-3x\n", {":3:", "optim.lr", "not a finite number"}},
    {"[optim]\nlr = -1\n", {":2:", "optim.lr", "> 0"}},
    {"[optim]\nlr = nan\n", {":2:", "optim.lr", "finite"}},
    {"[train]\nbatch_size = 0\n", {":2:", "train.batch_size", ">= 1"}},
    {"[train]\nbatch_size = 12.5\n", {":2:", "train.batch_size", "not an integer"}},
    {"[train]\nbatch_size = 99999999999\n", {":2:", "train.batch_size", "<= 2147483647"}},
    {"[model]\ndropout = 1\n", {":2:", "model.dropout", "[0, 1)"}},
    {"[train]\nlabel_smoothing = 1.5\n", {":2:", "train.label_smoothing", "[0, 1]"}},
    {"[optim]\nname = rmsprop\n", {":2:", "optim.name", "sgd|adam|adamw"}},
    {"[optim]\nnesterov = maybe\n", {":2:", "optim.nesterov", "true/false"}},
    {"[train]\nseed = -1\n", {":2:", "train.seed", "not an integer"}},
    {"[data]\nclasses = 3-1\n", {":2:", "data.classes", "low <= high"}},
    {"[data]\nclasses = 0,x\n", {":2:", "data.classes", "'all'"}},
    {"[train]\nepochs = 3\n\n[train]\nepochs = 4\n", {":5:", "train.epochs", "line 2"}},
    {"epochs = 3\n", {":1:", "epochs", "outside any [section]"}},
    {"[data]\nformat = idx\n[model\nname = cnn\n", {":3:", "syntax error", NULL}},
};

START_TEST(config_file_errors) {
    ct_test_make_tmpdir();
    const char *path = write_ini("bad.ini", bad_ini[_i].text);
    ct_config c, before;
    ct_config_defaults(&c);
    ck_assert_int_eq(ct_config_set(&c, "train.epochs", "42"), CT_OK);
    before = c;
    ct_status st = ct_config_load_file(&c, path);
    ct_test_expect_error(st, CT_ERR_CONFIG, path, bad_ini[_i].want[0], bad_ini[_i].want[1],
                 bad_ini[_i].want[2], NULL);
    ck_assert_mem_eq(&c, &before, sizeof c); /* nothing applied */
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(config_load_errors) {
    ct_test_make_tmpdir();
    ct_config c;
    const char *missing = ct_test_path("missing.ini");
    ct_test_expect_error(ct_config_load(&c, missing, 0, NULL), CT_ERR_IO, missing, NULL);

    /* a line longer than inih's buffer is an error, not two lines */
    char text[1024] = "[model]\nlayers = ";
    size_t len = strlen(text);
    memset(text + len, 'a', 600);
    strcpy(text + len + 600, "\n");
    const char *path = write_ini("long.ini", text);
    ct_test_expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, path, ":2:", "longer", NULL);

    /* the same checks through load_string name the given origin */
    ct_config_defaults(&c);
    ct_test_expect_error(ct_config_load_string(&c, "[dist]\nbuffers = sum\n", "inline"), CT_ERR_CONFIG,
                 "inline:2:", "dist.buffers", "broadcast|average|none", NULL);
    ck_assert_int_eq(ct_config_load_string(&c, "[dist]\nbucket_mb = 0.5\n", "inline"), CT_OK);
    ck_assert_double_eq(c.dist.bucket_mb, 0.5);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(config_override_errors) {
    ct_config c;
    ct_config_defaults(&c);
    ct_test_expect_error(ct_config_override(&c, "optim.lr=abc"), CT_ERR_CONFIG, "command line",
                 "optim.lr", "'abc'", NULL);
    ct_test_expect_error(ct_config_override(&c, "optim.beta=0.5"), CT_ERR_CONFIG, "command line",
                 "optim.beta", "beta1", NULL);
    ct_test_expect_error(ct_config_override(&c, "nosuch.key=1"), CT_ERR_CONFIG, "command line",
                 "[nosuch]", NULL);
    ct_test_expect_error(ct_config_override(&c, "epochs=3"), CT_ERR_CONFIG, "command line",
                 "train.epochs", NULL);
    ct_test_expect_error(ct_config_override(&c, "train.epochs"), CT_ERR_CONFIG, "command line",
                 "section.key=value", NULL);
    ct_test_expect_error(ct_config_override(&c, "resume=perhaps"), CT_ERR_CONFIG, "command line",
                 "train.resume", NULL);
    ct_test_expect_error(ct_config_override(&c, "model.layers=a ;b"), CT_ERR_CONFIG, "model.layers",
                 "comment", NULL);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "resume=yes"), CT_OK);
    ck_assert(c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "train.resume=0"), CT_OK);
    ck_assert(!c.train.resume);
    ck_assert_int_eq(ct_config_override(&c, "output.keep=3"), CT_OK);
    ck_assert_int_eq(c.output.keep, 3);
    ck_assert_int_eq(ct_config_override(&c, "output.keep=all"), CT_OK);
    ck_assert_int_eq(c.output.keep, 0);
    ck_assert_int_eq(ct_config_override(&c, "model.init_from="), CT_OK);
    ck_assert_str_eq(c.model.init_from, "");
    /* ct_config_load stops at the first bad override and says which */
    char *over[] = {"train.epochs=2", "train.batch_size=-4"};
    ct_test_expect_error(ct_config_load(&c, NULL, 2, over), CT_ERR_CONFIG, "train.batch_size", NULL);
    ck_assert_int_eq(c.train.epochs, 2);
}
END_TEST

START_TEST(config_dump_round_trip) {
    ct_test_make_tmpdir();
    ct_config a, b;
    char *over[] = {"data.dir=/data/x y", "data.format=npy", "data.train_x=tx.npy",
                    "data.mean=0.1", "data.std=1e-7", "data.classes=1,3,5-7",
                    "data.per_class=5", "model.name=custom", "model.layers=linear:8,relu",
                    "model.init_from=runs/a/ckpt.safetensors", "model.dropout=0.3",
                    "train.seed=12345678901234", "train.unfreeze_after=2",
                    "train.unfreeze=head.*,fc*", "train.unfreeze_lr_scale=0.3333333333333333",
                    "train.feature_cache=off", "optim.name=adamw", "optim.eps=1e-10",
                    "optim.weight_decay=0.01", "schedule.name=cosine", "schedule.min_lr=1e-5",
                    "output.keep=2", "dist.buffers=none", "dist.bucket_mb=0.1",
                    "sweep.checkpoints=runs/*/last.safetensors", "sweep.group_size=2",
                    "sweep.overrides=data.mean=0.3 train.eval_batch_size=100 | model.dropout=0|",
                    "train.drop_last=false"};
    int n = (int)(sizeof over / sizeof over[0]);
    ck_assert_msg(ct_config_load(&a, NULL, n, over) == CT_OK, "%s", ct_last_error());
    /* the longest one-line string value still dumps to a line inih can read back */
    char longest[CT_CFG_STR + 32] = "sweep.out=";
    size_t len = strlen(longest);
    memset(longest + len, 'c', CT_CFG_STR - 1);
    longest[len + CT_CFG_STR - 1] = '\0';
    ck_assert_msg(ct_config_override(&a, longest) == CT_OK, "%s", ct_last_error());
    strcat(longest, "c");
    ct_test_expect_error(ct_config_override(&a, longest), CT_ERR_CONFIG, "sweep.out", "longer",
                         NULL);
    const char *path = ct_test_path("effective.ini");
    ck_assert_int_eq(ct_config_save(&a, path), CT_OK);
    ck_assert_int_eq(ct_test_count_files(), 1);
    ck_assert_msg(ct_config_load(&b, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_mem_eq(&a, &b, sizeof a);
    ck_assert_double_eq(b.train.unfreeze_lr_scale, 0.3333333333333333);
    ck_assert_str_eq(b.data.dir, "/data/x y");
    char *text = ct_test_read_file(path, NULL);
    ck_assert_ptr_nonnull(strstr(text, "[optim]\nname = adamw\nlr = 0.001\n"));
    ck_assert_ptr_nonnull(strstr(text, "keep = 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "unfreeze_after = 2\n"));
    free(text);
    /* and the defaults round-trip too */
    ct_config_defaults(&a);
    ck_assert_int_eq(ct_config_save(&a, path), CT_OK);
    ck_assert_int_eq(ct_config_load(&b, path, 0, NULL), CT_OK);
    ck_assert_mem_eq(&a, &b, sizeof a);
    ct_test_remove_tmpdir();
}
END_TEST

/* sweep.overrides: groups split on '|', each applied all or nothing, checked at load. */
START_TEST(config_sweep_overrides) {
    ct_config c;
    ct_config_defaults(&c);
    char g[CT_CFG_STR];
    ck_assert_str_eq(c.sweep.overrides, "");
    ck_assert(!ct_config_override_group(c.sweep.overrides, 0, g, sizeof g)); /* no groups */
    ck_assert(!ct_config_override_group("  ", 0, g, sizeof g));

    const char *spec = "train.eval_batch_size=500  data.mean=0.3| model.dropout=0.1 |";
    ck_assert_msg(ct_config_set(&c, "sweep.overrides", spec) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.overrides, spec);
    ck_assert(ct_config_override_group(spec, 0, g, sizeof g));
    ck_assert_str_eq(g, "train.eval_batch_size=500  data.mean=0.3");
    ck_assert(ct_config_override_group(spec, 1, g, sizeof g));
    ck_assert_str_eq(g, "model.dropout=0.1");
    ck_assert(ct_config_override_group(spec, 2, g, sizeof g)); /* after the trailing '|' */
    ck_assert_str_eq(g, "");
    ck_assert(!ct_config_override_group(spec, 3, g, sizeof g));
    ck_assert(!ct_config_override_group(spec, -1, g, sizeof g));

    ct_config_override_group(spec, 0, g, sizeof g);
    ck_assert_int_eq(ct_config_apply_overrides(&c, g), CT_OK);
    ck_assert_int_eq(c.train.eval_batch_size, 500);
    ck_assert_double_eq(c.data.mean, 0.3);
    ck_assert_double_eq(c.model.dropout, 0.25);
    ct_config before = c;
    ck_assert_int_eq(ct_config_apply_overrides(&c, ""), CT_OK); /* the empty group: no change */
    ck_assert_mem_eq(&c, &before, sizeof c);
    /* all or nothing: the first override would apply, the second is bad */
    ct_test_expect_error(ct_config_apply_overrides(&c, "train.epochs=3 optim.lr=-1"), CT_ERR_CONFIG,
                 "optim.lr", "> 0", NULL);
    ck_assert_mem_eq(&c, &before, sizeof c);
    ct_test_expect_error(ct_config_apply_overrides(&c, "sweep.group_size=2"), CT_ERR_CONFIG,
                 "sweep.group_size", "[sweep]", NULL);
    ct_test_expect_error(ct_config_apply_overrides(&c, "model.dropout"), CT_ERR_CONFIG, "model.dropout",
                 "section.key=value", NULL);

    /* a bad group is a config error when the config loads, naming the group and the key */
    ct_test_expect_error(ct_config_override(&c, "sweep.overrides=data.mean=0.3 | model.dropout=2"),
                 CT_ERR_CONFIG, "sweep.overrides", "group 2", "model.dropout", "[0, 1)", NULL);
    ct_test_expect_error(ct_config_override(&c, "sweep.overrides=nosuch.key=1"), CT_ERR_CONFIG,
                 "sweep.overrides", "group 1", "[nosuch]", NULL);
    ct_test_expect_error(ct_config_override(&c, "sweep.overrides=sweep.out=x"), CT_ERR_CONFIG,
                 "sweep.overrides", "[sweep]", NULL);
    ck_assert_mem_eq(&c, &before, sizeof c);

    /* and from a file, where " ; ..." stays a comment */
    ct_test_make_tmpdir();
    const char *path = write_ini("sweep.ini", "[sweep]\n"
                                              "overrides = data.classes=0-4 | data.classes=5-9 ; two\n");
    ck_assert_msg(ct_config_load(&c, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.overrides, "data.classes=0-4 | data.classes=5-9");
    ck_assert(ct_config_override_group(c.sweep.overrides, 1, g, sizeof g));
    ck_assert_str_eq(g, "data.classes=5-9");
    ck_assert_int_eq(ct_config_apply_overrides(&c, g), CT_OK);
    ck_assert_str_eq(c.data.classes, "5-9");
    path = write_ini("bad.ini", "[sweep]\noverrides = data.classes=0-4 | data.classes=3-1\n");
    ct_test_expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, path, ":2:", "group 2",
                 "low <= high", NULL);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(config_classes) {
    bool keep[10];
    ck_assert_int_eq(ct_config_classes("all", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert(keep[i]);
    ck_assert_int_eq(ct_config_classes("1,3, 5-7", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(keep[i], i == 1 || i == 3 || (i >= 5 && i <= 7));
    ck_assert_int_eq(ct_config_classes("0-4", 10, keep), CT_OK);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(keep[i], i <= 4);
    ct_test_expect_error(ct_config_classes("8-10", 10, keep), CT_ERR_CONFIG, "data.classes", "0..9",
                 NULL);
    ct_test_expect_error(ct_config_classes("", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
    ct_test_expect_error(ct_config_classes("1,", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
    ct_test_expect_error(ct_config_classes("-1", 10, keep), CT_ERR_CONFIG, "data.classes", NULL);
}
END_TEST


/* Enum keys store the library's own values; a word the table does not list is a config
 * error naming the key and the words it takes. */
START_TEST(config_library_enums) {
    ct_config c;
    char *over[] = {"optim.name=sgd", "optim.momentum=0.5", "optim.nesterov=true",
                    "schedule.name=cosine", "dist.buffers=none", "dist.shard=pad"};
    ck_assert_msg(ct_config_load(&c, NULL, 6, over) == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(c.optim.kind, CT_OPTIM_SGD);
    ck_assert_double_eq(c.optim.dampening, 0);
    ck_assert_int_eq(c.schedule.name, CT_SCHED_COSINE);
    ck_assert_int_eq(c.dist.buffers, CT_BUFFERS_NONE);
    ck_assert_int_eq(c.dist.shard, CT_SHARD_PAD);
    /* the config is what ct_optim_new takes, with no mapping in between */
    ct_optim_free(ct_optim_new(c.optim));
    ck_assert_int_eq(ct_config_override(&c, "optim.name=adamw"), CT_OK);
    ck_assert_int_eq(c.optim.kind, CT_OPTIM_ADAMW);
    char buf[32];
    ck_assert_int_eq(ct_config_get(&c, "dist.buffers", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "none");
    ck_assert_int_eq(ct_config_get(&c, "optim.name", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "adamw");
    ct_config before = c;
    ct_test_expect_error(ct_config_override(&c, "optim.name=lamb"), CT_ERR_CONFIG, "optim.name",
                         "'lamb'", "sgd|adam|adamw", NULL);
    ct_test_expect_error(ct_config_override(&c, "schedule.name=linear"), CT_ERR_CONFIG,
                         "schedule.name", "none|step|cosine", NULL);
    /* the library's third shard mode is for evaluation only, and not a config word */
    ct_test_expect_error(ct_config_override(&c, "dist.shard=exact"), CT_ERR_CONFIG, "dist.shard",
                         "drop|pad", NULL);
    ck_assert_mem_eq(&c, &before, sizeof c);
}
END_TEST

/* List keys go on over indented lines (joined with ','); other keys refuse them. */
/* A list item may not start with '#' or ';': the config's own dump writes long lists one
 * item a line, where inih would read it as a comment (found by fuzz_config). */
START_TEST(config_list_item_cannot_look_like_a_comment) {
    ct_config c;
    ct_config_defaults(&c);
    ct_test_expect_error(ct_config_override(&c, "sweep.checkpoints=a.safetensors, #b"), CT_ERR_CONFIG,
                         "sweep.checkpoints", "starts with '#'", NULL);
    ct_test_expect_error(ct_config_override(&c, "model.freeze=;x"), CT_ERR_CONFIG, "model.freeze",
                         "comment", NULL);
    ck_assert_int_eq(ct_config_override(&c, "sweep.checkpoints=a#b.safetensors"), CT_OK);
}
END_TEST

/* A list item is any text a path may be (found by fuzz_config): items with '=' or ':' in them,
 * or starting with '[' or '=', survive the dump that writes long lists one item a line, where
 * an indented line starting with '[' once ended the key and read back as "set twice". */
START_TEST(config_list_items_round_trip) {
    ct_test_make_tmpdir();
    static const char *const odd[] = {"[ab]*.safetensors", "=x.safetensors", "runs/lr=0.1/last",
                                      "[sweep]", "a:b", "= [c] =", "[", "="};
    int nodd = (int)(sizeof odd / sizeof odd[0]);
    static ct_config c, d;
    ct_config_defaults(&c);
    /* long enough (over one INI line) that the dump goes one item a line */
    char *list = calloc(1, CT_CFG_LIST);
    for (int i = 0; i < 3 * nodd; i++) {
        if (i) strcat(list, ",");
        if (i % nodd == 0) strcat(list, "runs/a-rather-long-directory-name-to-fill-a-line/ckpt,");
        strcat(list, odd[i % nodd]);
    }
    ck_assert_msg(ct_config_set(&c, "sweep.checkpoints", list) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.checkpoints, list);
    const char *dump = ct_test_path("dump.ini");
    ck_assert_int_eq(ct_config_save(&c, dump), CT_OK);
    char *text = ct_test_read_file(dump, NULL);
    ck_assert_ptr_nonnull(strstr(text, "\n    [ab]*.safetensors,\n    =x.safetensors,\n"));
    free(text);
    ck_assert_msg(ct_config_load(&d, dump, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(d.sweep.checkpoints, list);
    ck_assert_mem_eq(&c, &d, sizeof c);
    /* in a user's file too: an indented "[...]" after a list key continues it, as in inih,
     * while an unindented one is a section */
    const char *path = write_ini("user.ini", "[sweep]\ncheckpoints = a,\n  [b]*\n  = c\n"
                                             "[model]\nfreeze = x\n");
    ck_assert_msg(ct_config_load(&d, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(d.sweep.checkpoints, "a,[b]*,= c");
    ck_assert_str_eq(d.model.freeze, "x");
    free(list);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(config_continuation_lines) {
    ct_test_make_tmpdir();
    const char *path = write_ini("list.ini", "[sweep]\n"
                                             "checkpoints = runs/a/*.safetensors,\n"
                                             "    runs/b/last.safetensors\n"
                                             "\n"
                                             "  ; a comment between items\n"
                                             "\truns/c/x.safetensors , runs/d/y.safetensors\n"
                                             "datasets =\n"
                                             "    /data/one\n"
                                             "    /data/two\n"
                                             "[model]\n"
                                             "freeze = 0.*,\n"
                                             "  1.*\n");
    static ct_config c, d;
    ck_assert_msg(ct_config_load(&c, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.sweep.checkpoints, "runs/a/*.safetensors,runs/b/last.safetensors,"
                                          "runs/c/x.safetensors,runs/d/y.safetensors");
    ck_assert_str_eq(c.sweep.datasets, "/data/one,/data/two");
    ck_assert_str_eq(c.model.freeze, "0.*,1.*");
    /* far more than one line holds: dumped one item a line, and loaded back equal */
    char item[CT_CFG_STR], over[CT_CFG_STR + 32];
    memset(item, 'p', CT_CFG_STR - 1);
    item[CT_CFG_STR - 1] = '\0';
    for (int i = 0; i < 20; i++) {
        item[0] = (char)('a' + i);
        char *joined = malloc(2 * CT_CFG_LIST);
        strcat(strcat(strcpy(joined, c.sweep.checkpoints), ","), item);
        ck_assert_msg(ct_config_set(&c, "sweep.checkpoints", joined) == CT_OK, "%s",
                      ct_last_error());
        free(joined);
    }
    ck_assert_uint_gt(strlen(c.sweep.checkpoints), 20 * (CT_CFG_STR - 1));
    const char *dump = ct_test_path("dump.ini");
    ck_assert_int_eq(ct_config_save(&c, dump), CT_OK);
    ck_assert_msg(ct_config_load(&d, dump, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_mem_eq(&c, &d, sizeof c);
    char *text = ct_test_read_file(dump, NULL);
    ck_assert_ptr_nonnull(strstr(text, "checkpoints =\n    runs/a/*.safetensors,\n"));
    free(text);
    /* one item longer than a line is refused, naming the key */
    memset(over, 'q', CT_CFG_STR);
    over[CT_CFG_STR] = '\0';
    ct_test_expect_error(ct_config_set(&c, "sweep.datasets", over), CT_ERR_CONFIG,
                         "sweep.datasets", "longer than 175", NULL);
    /* a continued one-line key is an error naming the file, line and key */
    path = write_ini("bad.ini", "[optim]\nname = sgd\n  adam\n");
    ct_test_expect_error(ct_config_load(&c, path, 0, NULL), CT_ERR_CONFIG, ":3:", "optim.name",
                         "takes one line", NULL);
    /* an indented key after a [section] line starts a new key, as in inih */
    path = write_ini("indented.ini", "[sweep]\ndatasets = a\n[model]\n  freeze = x\n");
    ck_assert_msg(ct_config_load(&c, path, 0, NULL) == CT_OK, "%s", ct_last_error());
    ck_assert_str_eq(c.model.freeze, "x");
    ck_assert_str_eq(c.sweep.datasets, "a");
    ct_test_remove_tmpdir();
}
END_TEST

/* The ViT keys (issue 11): architecture keys default to the preset's ("preset" = 0), the
 * image size to the data's, and each takes an override. */
START_TEST(config_vit_keys) {
    ct_config c;
    char *over[] = {"model.name=vit_b_16", "model.num_layers=2", "model.attention_dropout=0.1"};
    ck_assert_msg(ct_config_load(&c, NULL, 3, over) == CT_OK, "%s", ct_last_error());
    ck_assert_int_eq(c.model.name, CT_CFG_MODEL_VIT_B_16);
    ck_assert_int_eq(c.model.num_layers, 2);
    ck_assert_int_eq(c.model.patch_size, 0);
    ck_assert_int_eq(c.model.image_size, 0);
    ck_assert_int_eq(c.model.in_channels, 3);
    ck_assert_int_eq(c.model.num_classes, 0);
    ck_assert_double_eq(c.model.attention_dropout, 0.1);
    char buf[32];
    ck_assert_int_eq(ct_config_get(&c, "model.hidden_dim", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "preset");
    ck_assert_int_eq(ct_config_get(&c, "model.image_size", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "data");
    ck_assert_int_eq(ct_config_get(&c, "model.name", buf, sizeof buf), CT_OK);
    ck_assert_str_eq(buf, "vit_b_16");
    ct_test_expect_error(ct_config_override(&c, "model.name=vit_l_16"), CT_ERR_CONFIG, "model.name",
                         "vit|vit_b_16|vit_b_32|vit_tiny", NULL);
    ct_test_expect_error(ct_config_override(&c, "model.attention_dropout=1"), CT_ERR_CONFIG,
                         "model.attention_dropout", NULL);
    ct_test_expect_error(ct_config_override(&c, "model.num_heads=-2"), CT_ERR_CONFIG, "model.num_heads", NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli_config");
    TCase *cf = tcase_create("config");
    tcase_add_test(cf, config_defaults);
    tcase_add_test(cf, config_preempt_signals);
    tcase_add_test(cf, config_file_and_overrides);
    tcase_add_test(cf, config_line_endings);
    tcase_add_test(cf, config_list_item_cannot_look_like_a_comment);
    tcase_add_loop_test(cf, config_file_errors, 0, (int)(sizeof bad_ini / sizeof bad_ini[0]));
    tcase_add_test(cf, config_load_errors);
    tcase_add_test(cf, config_override_errors);
    tcase_add_test(cf, config_dump_round_trip);
    tcase_add_test(cf, config_classes);
    tcase_add_test(cf, config_sweep_overrides);
    tcase_add_test(cf, config_library_enums);
    tcase_add_test(cf, config_continuation_lines);
    tcase_add_test(cf, config_list_items_round_trip);
    tcase_add_test(cf, config_vit_keys);
    tcase_add_unchecked_fixture(cf, ct_test_dir_setup, ct_test_dir_teardown);
    suite_add_tcase(s, cf);
    return ct_test_run(s);
}
