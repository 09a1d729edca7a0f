// Package cli registers `caddy domaincerts`, the command line of the
// domaincerts admin API: list, get, upload, attach, detach, delete,
// provision, and import (a directory of certificate files, or the
// certificates CertMagic already manages in Caddy's storage).
//
// It finds the admin endpoint as `caddy reload` does: --address, else the
// admin address of the config given with --config (or the Caddyfile in the
// current directory), else localhost:2019.
//
// Exit codes: 0 success; 1 the API refused a request (or some items of an
// import failed); 2 bad usage; 3 no such domain or certificate; 4 Caddy
// could not be reached or failed (a 5xx answer).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK          = 0
	exitRefused     = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitUnreachable = 4
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "domaincerts",
		Usage: "<list|get|upload|attach|detach|delete|provision|import> [args] [--address <admin>] [--json]",
		Short: "Manages the domains and certificates of a running Caddy's domaincerts",
		Long: `
Talks to the domaincerts admin API of a running Caddy. It finds the admin
endpoint as 'caddy reload' does: --address, else the admin address of the
config given with --config (or ./Caddyfile), else localhost:2019.

Output is a table; --json prints the API's objects instead, for scripts.
Exit codes: 0 success; 1 the API refused a request (or some items of an
import failed); 2 bad usage; 3 no such domain or certificate; 4 Caddy could
not be reached or failed.
`,
		CobraFunc: buildCommand,
	})
}

func buildCommand(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.String("address", "", "The admin endpoint's address (default: from --config, else localhost:2019)")
	pf.StringP("config", "c", "", "Configuration file whose admin address to use")
	pf.StringP("adapter", "a", "", "Name of the config adapter of --config")
	pf.Bool("json", false, "Print JSON instead of a table")
	add := func(use, short, long string, args cobra.PositionalArgs, run func(*env) (int, error), flags func(*cobra.Command)) {
		sub := &cobra.Command{Use: use, Short: short, Long: long, Args: cobra.ArbitraryArgs}
		if flags != nil {
			flags(sub)
		}
		sub.RunE = caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
			// the arguments are checked here, so that bad usage exits
			// with exitUsage
			if err := args(sub, sub.Flags().Args()); err != nil {
				return exitUsage, fmt.Errorf("%s: %v; see caddy domaincerts %s --help", sub.Name(), err, sub.Name())
			}
			e, err := newEnv(sub, fl)
			if err != nil {
				return exitUsage, err
			}
			return exitCode(run(e))
		})
		cmd.AddCommand(sub)
	}
	add("list [domains|certificates]", "Lists domains (default) or certificates",
		"Lists every domain, or every certificate, following the pages. --domain looks one domain up by name.",
		cobra.MaximumNArgs(1), runList, func(c *cobra.Command) {
			c.Flags().String("domain", "", "Only the domain with this name")
		})
	add("get <domain name|rd_...|cert_...>", "Shows a domain or a certificate", "", cobra.ExactArgs(1), runGet, nil)
	add("upload <certificate.pem> <key.pem>", "Uploads a certificate and its private key",
		"Uploads a certificate chain (leaf first) and its private key, and prints the certificate's ID. --attach also attaches it to the domains given, creating them as needed.",
		cobra.ExactArgs(2), runUpload, func(c *cobra.Command) {
			c.Flags().String("description", "", "The certificate's description")
			c.Flags().String("metadata", "", "The certificate's metadata")
			c.Flags().StringSlice("attach", nil, "Domain names to attach the certificate to (created if missing)")
		})
	add("attach <domain name|rd_...> <cert_...>", "Attaches an uploaded certificate to a domain (creating the domain if needed)",
		"", cobra.ExactArgs(2), runAttach, nil)
	add("detach <domain name|rd_...>", "Detaches a domain's certificate, or with --policy its management policy",
		"", cobra.ExactArgs(1), runDetach, func(c *cobra.Command) {
			c.Flags().Bool("policy", false, "Detach the certificate management policy instead")
		})
	add("delete <domain name|rd_...|cert_...>", "Deletes a domain or a certificate", "", cobra.ExactArgs(1), runDelete, nil)
	add("provision <domain name|rd_...>", "Runs a managed domain's provisioning job now", "", cobra.ExactArgs(1), runProvision, nil)
	add("import <dir> | import --from-storage [name...]", "Imports certificate files, or CertMagic's certificates in Caddy's storage",
		importLong, cobra.ArbitraryArgs, runImport, func(c *cobra.Command) {
			c.Flags().Bool("from-storage", false, "Import the certificates CertMagic manages in the running Caddy's storage, as managed domains")
			c.Flags().Int("parallel", 8, "Requests in flight at once")
			c.Flags().Bool("dry-run", false, "Report what would be done; change nothing")
		})
}

const importLong = `
import DIR uploads every certificate and private key pair found in the files
of DIR and its subdirectories (PEM; pairs are matched by their keys, whatever
the file names), and attaches each certificate to the names it covers,
creating those domains as needed. What is already there is skipped: a
certificate with the same fingerprint is not uploaded again, a domain that
already uses it is left alone, and a domain with another certificate takes
the imported one only if it ends later. Running it twice changes nothing
the second time. Files that cannot be used are reported by name, with the
API's error code, and do not stop the others.

import --from-storage turns the certificates that CertMagic manages in the
running Caddy's storage (a Caddy that served those names before
domaincerts) into managed domains, with the authority whose issuer obtained
them: they keep serving the same certificates, with no new order, and
CertMagic renews them as before.
`

// usageError is bad usage found after the arguments were checked.
type usageError struct{ error }

// env is what a subcommand runs with.
type env struct {
	ctx  context.Context
	c    *client
	fl   caddycmd.Flags
	args []string
	json bool
	out  io.Writer
	errw io.Writer
}

func newEnv(cmd *cobra.Command, fl caddycmd.Flags) (*env, error) {
	addr := fl.String("address")
	if addr == "" {
		// as caddy reload does: the config given, else ./Caddyfile
		cfg, file, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
		if err != nil {
			return nil, fmt.Errorf("finding the admin address: %w", err)
		}
		if addr, err = caddycmd.DetermineAdminAPIAddress("", cfg, file, fl.String("adapter")); err != nil {
			return nil, fmt.Errorf("finding the admin address: %w", err)
		}
	}
	c, err := newClient(addr)
	if err != nil {
		return nil, err
	}
	return &env{ctx: cmd.Context(), c: c, fl: fl, args: cmd.Flags().Args(), json: fl.Bool("json"),
		out: cmd.OutOrStdout(), errw: cmd.ErrOrStderr()}, nil
}

// exitCode maps an error to the exit code scripts can use.
func exitCode(code int, err error) (int, error) {
	if err == nil {
		return code, nil
	}
	var ae *apiError
	var ue errUnreachable
	var usage *usageError
	switch {
	case errors.As(err, &usage):
		return exitUsage, err
	case errors.As(err, &ue):
		return exitUnreachable, err
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
		return exitNotFound, err
	case errors.As(err, &ae) && ae.Status >= 500:
		return exitUnreachable, err
	case code > exitOK:
		return code, err
	}
	return exitRefused, err
}

func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func (e *env) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(e.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

func runList(e *env) (int, error) {
	what := "domains"
	if len(e.args) == 1 {
		what = e.args[0]
	}
	var items []object
	var err error
	switch what {
	case "domains":
		q := ""
		if name := e.fl.String("domain"); name != "" {
			q = "domain=" + url.QueryEscape(name)
		}
		items, err = e.c.list(e.ctx, "domains", q)
	case "certificates", "tls_certificates":
		if e.fl.String("domain") != "" {
			return exitUsage, &usageError{fmt.Errorf("--domain looks up domains; list certificates takes no --domain")}
		}
		items, err = e.c.list(e.ctx, "tls_certificates", "")
	default:
		return exitUsage, &usageError{fmt.Errorf("list %q: list domains or certificates", what)}
	}
	if err != nil {
		return exitRefused, err
	}
	if e.json {
		if items == nil {
			items = []object{}
		}
		return exitOK, e.printJSON(items)
	}
	if what == "domains" {
		rows := make([][]string, len(items))
		for i, d := range items {
			rows[i] = domainRow(d)
		}
		e.table("ID\tDOMAIN\tCERTIFICATE\tSTATUS", rows)
	} else {
		rows := make([][]string, len(items))
		for i, c := range items {
			rows[i] = certificateRow(c)
		}
		e.table("ID\tSUBJECT\tNAMES\tNOT AFTER\tSOURCE", rows)
	}
	return exitOK, nil
}

func domainRow(d object) []string {
	if code := str(d, "error_code"); code != "" { // a damaged record
		return []string{str(d, "id"), str(d, "domain"), "-", code}
	}
	cert, status := "-", "uploaded"
	if c, ok := d["certificate"].(map[string]any); ok {
		cert = str(c, "id")
	}
	if p, ok := d["certificate_management_policy"].(map[string]any); ok {
		status = "managed (" + str(p, "authority") + ")"
		if st, ok := d["certificate_management_status"].(map[string]any); ok {
			if job, ok := st["provisioning_job"].(map[string]any); ok {
				if code := str(job, "error_code"); code != "" {
					status += ": " + code
				} else {
					status += ": provisioning"
				}
			}
		}
	} else if cert == "-" {
		status = "no certificate"
	}
	return []string{str(d, "id"), str(d, "domain"), cert, status}
}

func certificateRow(c object) []string {
	if code := str(c, "error_code"); code != "" {
		return []string{str(c, "id"), "-", "-", "-", code}
	}
	var names []string
	if sans, ok := c["subject_alternative_names"].(map[string]any); ok {
		names = append(names, asStrings(sans["dns_names"])...)
	}
	shown := strings.Join(names, ",")
	if len(names) > 3 {
		shown = strings.Join(names[:3], ",") + fmt.Sprintf(",+%d", len(names)-3)
	}
	source := "upload"
	if str(c, "managed_domain_id") != "" {
		source = "managed"
	}
	return []string{str(c, "id"), str(c, "subject_common_name"), shown, str(c, "not_after"), source}
}

func asStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func runGet(e *env) (int, error) {
	ref := e.args[0]
	var obj object
	var err error
	if strings.HasPrefix(ref, "cert_") {
		err = e.c.do(e.ctx, "GET", "/domaincerts/tls_certificates/"+url.PathEscape(ref), nil, &obj)
	} else {
		obj, err = e.c.resolveDomain(e.ctx, ref)
	}
	if err != nil {
		return exitRefused, err
	}
	if e.json {
		return exitOK, e.printJSON(obj)
	}
	if strings.HasPrefix(ref, "cert_") {
		e.table("ID\tSUBJECT\tNAMES\tNOT AFTER\tSOURCE", [][]string{certificateRow(obj)})
		fmt.Fprintf(e.out, "fingerprint: %s\nserial: %s\nissuer: %s\n", str(obj, "fingerprint"), str(obj, "serial_number"), str(obj, "issuer_common_name"))
		return exitOK, nil
	}
	e.table("ID\tDOMAIN\tCERTIFICATE\tSTATUS", [][]string{domainRow(obj)})
	for _, k := range []string{"cname_target", "acme_challenge_cname_target"} {
		if v := str(obj, k); v != "" {
			fmt.Fprintf(e.out, "%s: %s\n", k, v)
		}
	}
	if st, ok := obj["certificate_management_status"].(map[string]any); ok {
		if job, ok := st["provisioning_job"].(map[string]any); ok && str(job, "msg") != "" {
			fmt.Fprintf(e.out, "provisioning: %s\n", str(job, "msg"))
		}
	}
	return exitOK, nil
}

func runUpload(e *env) (int, error) {
	certPEM, err := os.ReadFile(e.args[0])
	if err != nil {
		return exitUsage, &usageError{err}
	}
	keyPEM, err := os.ReadFile(e.args[1])
	if err != nil {
		return exitUsage, &usageError{err}
	}
	var c object
	body := map[string]any{"certificate_pem": string(certPEM), "private_key_pem": string(keyPEM),
		"description": e.fl.String("description"), "metadata": e.fl.String("metadata")}
	if err := e.c.do(e.ctx, "POST", "/domaincerts/tls_certificates", body, &c); err != nil {
		return exitRefused, err
	}
	names, _ := e.fl.GetStringSlice("attach")
	var domains []object
	for _, name := range names {
		d, err := e.attach(name, str(c, "id"))
		if err != nil {
			return exitRefused, fmt.Errorf("uploaded %s, but attaching it to %s: %w", str(c, "id"), name, err)
		}
		domains = append(domains, d)
	}
	if e.json {
		return exitOK, e.printJSON(map[string]any{"certificate": c, "domains": domains})
	}
	e.table("ID\tSUBJECT\tNAMES\tNOT AFTER\tSOURCE", [][]string{certificateRow(c)})
	for _, d := range domains {
		fmt.Fprintf(e.out, "attached to %s (%s)\n", str(d, "domain"), str(d, "id"))
	}
	return exitOK, nil
}

// attach attaches certificate certID to the domain ref (an ID or a name),
// creating a domain of that name if there is none.
func (e *env) attach(ref, certID string) (object, error) {
	d, err := e.c.resolveDomain(e.ctx, ref)
	var out object
	switch {
	case err == nil:
		err = e.c.do(e.ctx, "PATCH", "/domaincerts/domains/"+str(d, "id"), map[string]any{"certificate_id": certID}, &out)
	case isCode(err, "NOT_FOUND") && !strings.HasPrefix(ref, "rd_"):
		err = e.c.do(e.ctx, "POST", "/domaincerts/domains", map[string]any{"domain": ref, "certificate_id": certID}, &out)
	}
	return out, err
}

func runAttach(e *env) (int, error) {
	d, err := e.attach(e.args[0], e.args[1])
	if err != nil {
		return exitRefused, err
	}
	if e.json {
		return exitOK, e.printJSON(d)
	}
	e.table("ID\tDOMAIN\tCERTIFICATE\tSTATUS", [][]string{domainRow(d)})
	return exitOK, nil
}

func runDetach(e *env) (int, error) {
	d, err := e.c.resolveDomain(e.ctx, e.args[0])
	if err != nil {
		return exitRefused, err
	}
	what := "certificate"
	if e.fl.Bool("policy") {
		what = "certificate_management_policy"
	}
	if err := e.c.do(e.ctx, "DELETE", "/domaincerts/domains/"+str(d, "id")+"/"+what, nil, nil); err != nil {
		return exitRefused, err
	}
	return e.done(map[string]any{"detached": what, "domain_id": str(d, "id"), "domain": str(d, "domain")},
		fmt.Sprintf("detached the %s of %s (%s)", strings.ReplaceAll(what, "_", " "), str(d, "domain"), str(d, "id")))
}

func runDelete(e *env) (int, error) {
	ref := e.args[0]
	if strings.HasPrefix(ref, "cert_") {
		if err := e.c.do(e.ctx, "DELETE", "/domaincerts/tls_certificates/"+url.PathEscape(ref), nil, nil); err != nil {
			return exitRefused, err
		}
		return e.done(map[string]any{"deleted": ref}, "deleted certificate "+ref)
	}
	d, err := e.c.resolveDomain(e.ctx, ref)
	if err != nil {
		return exitRefused, err
	}
	if err := e.c.do(e.ctx, "DELETE", "/domaincerts/domains/"+str(d, "id"), nil, nil); err != nil {
		return exitRefused, err
	}
	return e.done(map[string]any{"deleted": str(d, "id"), "domain": str(d, "domain")},
		fmt.Sprintf("deleted domain %s (%s)", str(d, "domain"), str(d, "id")))
}

func runProvision(e *env) (int, error) {
	d, err := e.c.resolveDomain(e.ctx, e.args[0])
	if err != nil {
		return exitRefused, err
	}
	var out object
	if err := e.c.do(e.ctx, "POST", "/domaincerts/domains/"+str(d, "id")+"/provision", nil, &out); err != nil {
		return exitRefused, err
	}
	if e.json {
		return exitOK, e.printJSON(out)
	}
	e.table("ID\tDOMAIN\tCERTIFICATE\tSTATUS", [][]string{domainRow(out)})
	return exitOK, nil
}

// done prints the outcome of a command without an object to show.
func (e *env) done(v map[string]any, line string) (int, error) {
	if e.json {
		return exitOK, e.printJSON(v)
	}
	fmt.Fprintln(e.out, line)
	return exitOK, nil
}

// progress writes a progress line to w at most every interval.
type progress struct {
	w     io.Writer
	last  time.Time
	every time.Duration
}

func (p *progress) show(format string, args ...any) {
	if time.Since(p.last) < p.every {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, format+"\n", args...)
}
