/* The C floors of the Postfix benchmark: libmilter milters that do no work of their own,
 * so what they cost the MTA is the protocol and libmilter alone.
 *
 *   floor_milter SOCKET accept
 *       ACCEPT at connect; every other step negotiated away (the cheapest any milter is).
 *   floor_milter SOCKET PROTOCOL [RCPT_MACROS]
 *       asks for exactly the protocol steps in PROTOCOL (hex, the SMFIP_* bits crowdsec-milter
 *       asks for, ANDed with what the MTA offers, as pymilter does), answers CONTINUE, or
 *       NOREPLY where the no-reply bit is set, reads {rcpt_mailer} at RCPT as crowdsec-milter
 *       does, and ACCEPTs at DATA. RCPT_MACROS, if given, is requested for the RCPT stage
 *       with smfi_setsymlist, as crowdsec-milter does when it asks for macros.
 *
 * Built by bench/postfix_bench.py with the system compiler: cc floor_milter.c -lmilter -lpthread
 */
#include <libmilter/mfapi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int accept_mode;
static unsigned long wanted;
static const char *rcpt_macros;
static unsigned long negotiated; /* the same for every session of one MTA */

static sfsistat reply(unsigned long noreply_bit)
{
    return (negotiated & noreply_bit) ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
                             unsigned long f2, unsigned long f3, unsigned long *pf0,
                             unsigned long *pf1, unsigned long *pf2, unsigned long *pf3)
{
    (void)f2; (void)f3;
    *pf0 = 0; /* no message changes */
    *pf2 = 0;
    *pf3 = 0;
    if (accept_mode) {
        *pf1 = f1 & (SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NODATA |
                     SMFIP_NOUNKNOWN | SMFIP_NOEOH | SMFIP_NOHDRS | SMFIP_NOBODY);
        return SMFIS_CONTINUE;
    }
    *pf1 = f1 & wanted;
    negotiated = *pf1;
    if (rcpt_macros != NULL && (f0 & SMFIF_SETSYMLIST)) {
        *pf0 = SMFIF_SETSYMLIST;
        if (smfi_setsymlist(ctx, SMFIM_ENVRCPT, (char *)rcpt_macros) != MI_SUCCESS)
            return SMFIS_REJECT;
    }
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
    (void)ctx; (void)host; (void)addr;
    return accept_mode ? SMFIS_ACCEPT : reply(SMFIP_NR_CONN);
}

static sfsistat on_helo(SMFICTX *ctx, char *helo)
{
    (void)ctx; (void)helo;
    return reply(SMFIP_NR_HELO);
}

static sfsistat on_mail(SMFICTX *ctx, char **argv)
{
    (void)ctx; (void)argv;
    return reply(SMFIP_NR_MAIL);
}

static sfsistat on_rcpt(SMFICTX *ctx, char **argv)
{
    (void)argv;
    (void)smfi_getsymval(ctx, "{rcpt_mailer}");
    return reply(SMFIP_NR_RCPT);
}

static sfsistat on_data(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_ACCEPT;
}

int main(int argc, char **argv)
{
    struct smfiDesc desc;

    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET accept|PROTOCOL [RCPT_MACROS]\n", argv[0]);
        return 2;
    }
    accept_mode = strcmp(argv[2], "accept") == 0;
    if (!accept_mode)
        wanted = strtoul(argv[2], NULL, 16);
    rcpt_macros = argc > 3 && argv[3][0] ? argv[3] : NULL;
    memset(&desc, 0, sizeof desc);
    desc.xxfi_name = "floor";
    desc.xxfi_version = SMFI_VERSION;
    desc.xxfi_flags = rcpt_macros ? SMFIF_SETSYMLIST : 0;
    desc.xxfi_connect = on_connect;
    desc.xxfi_negotiate = on_negotiate;
    if (!accept_mode) {
        desc.xxfi_helo = on_helo;
        desc.xxfi_envfrom = on_mail;
        desc.xxfi_envrcpt = on_rcpt;
        desc.xxfi_data = on_data;
    }
    if (smfi_setconn(argv[1]) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS) {
        fprintf(stderr, "floor_milter: cannot set up %s\n", argv[1]);
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
