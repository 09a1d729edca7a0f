package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/domaincerts/caddy-domaincerts/internal/bundle"
	"github.com/domaincerts/caddy-domaincerts/internal/dcerr"
)

// maxImportFile bounds the files import reads; larger ones are not
// certificates or keys.
const maxImportFile = 1 << 20

// pair is a certificate chain found in a file, and the key that matches
// its leaf.
type pair struct {
	certFile, keyFile string
	chainPEM, keyPEM  string
	leaf              *x509.Certificate
	certs             []*x509.Certificate // the chain as found, leaf first if it is in order
	fingerprint       string
}

// problem is something import could not do, by file.
type problem struct {
	File string `json:"file"`
	Code string `json:"error_code"`
	Msg  string `json:"msg"`
}

// skip is a file that import passed over because it holds nothing to
// import. Skips are reported but, unlike problems, do not fail the run: a
// directory of certificates often holds other files too.
type skip struct {
	File   string `json:"file"`
	Reason string `json:"reason"`
}

// scanned is what scan found in a directory.
type scanned struct {
	pairs    []*pair
	problems []problem
	skipped  []skip
}

// scan finds the certificate chains and private keys in the files of dir
// and matches them by public key. It also returns the files it skipped:
// files that are not PEM or hold neither certificates nor keys, files
// over maxImportFile, files that are not regular, and keys that match no
// certificate. A link to nothing is a problem, not a skip.
func scan(dir string) (*scanned, error) {
	type key struct {
		file, pem string
	}
	var chains []*pair
	keys := map[string]key{}          // PKIX public key -> key
	keyFiles := map[string][]string{} // PKIX public key -> every file that holds it
	var problems []problem
	var skipped []skip
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			problems = append(problems, problem{File: p, Code: "UNREADABLE", Msg: err.Error()})
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		// a link (certbot's live/ directory) counts as the file it points at
		info, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// a problem, not a skip: a copy of certbot's live/ without
			// archive/ would otherwise import nothing and succeed
			problems = append(problems, problem{File: p, Code: "UNREADABLE", Msg: "a link to a file that does not exist"})
			return nil
		case err != nil:
			problems = append(problems, problem{File: p, Code: "UNREADABLE", Msg: err.Error()})
			return nil
		case !info.Mode().IsRegular():
			skipped = append(skipped, skip{File: p, Reason: "not a regular file"})
			return nil
		case info.Size() > maxImportFile:
			skipped = append(skipped, skip{File: p, Reason: fmt.Sprintf("too large (over %d KiB) for a certificate or key", maxImportFile>>10)})
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			problems = append(problems, problem{File: p, Code: "UNREADABLE", Msg: err.Error()})
			return nil
		}
		var chain []*pem.Block
		rest := b
		blocks, relevant := 0, 0
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			blocks++
			if block.Type == "CERTIFICATE" || strings.HasSuffix(block.Type, "PRIVATE KEY") {
				relevant++
			}
			switch {
			case block.Type == "CERTIFICATE":
				chain = append(chain, block)
			case strings.HasSuffix(block.Type, "PRIVATE KEY"):
				// checked as an upload checks it, for the same codes
				keyPEM := string(pem.EncodeToMemory(block))
				signer, _, err := bundle.ParseKey(keyPEM)
				if err != nil {
					problems = append(problems, problemOf(p, err))
					continue
				}
				pub, err := x509.MarshalPKIXPublicKey(signer.Public())
				if err != nil {
					problems = append(problems, problem{File: p, Code: "KEY_UNSUPPORTED", Msg: err.Error()})
					continue
				}
				keys[string(pub)] = key{file: p, pem: keyPEM}
				keyFiles[string(pub)] = append(keyFiles[string(pub)], p)
			}
		}
		switch {
		case blocks == 0:
			skipped = append(skipped, skip{File: p, Reason: "not PEM"})
		case relevant == 0:
			skipped = append(skipped, skip{File: p, Reason: "no certificate or private key in it"})
		}
		if len(chain) == 0 {
			return nil
		}
		var certs []*x509.Certificate
		var sb strings.Builder
		for i, blk := range chain {
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				problems = append(problems, problem{File: p, Code: "CERT_PEM_INVALID", Msg: fmt.Sprintf("certificate %d does not parse: %v", i+1, err)})
				return nil
			}
			certs = append(certs, c)
			sb.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes}))
		}
		chains = append(chains, &pair{certFile: p, chainPEM: sb.String(), leaf: certs[0], certs: certs,
			fingerprint: bundle.Fingerprint(sb.String())})
		return nil
	})
	if err != nil {
		return nil, err
	}
	// a key that no certificate of the directory has is of no use here
	// (a key whose certificate was renewed, or is kept elsewhere)
	certified := map[string]bool{}
	for _, c := range chains {
		for _, cert := range c.certs {
			if pub, err := x509.MarshalPKIXPublicKey(cert.PublicKey); err == nil {
				certified[string(pub)] = true
			}
		}
	}
	for pub, files := range keyFiles {
		if !certified[pub] {
			for _, f := range files {
				skipped = append(skipped, skip{File: f, Reason: "no certificate for this key"})
			}
		}
	}
	// one pair per leaf: the longest chain (fullchain.pem over cert.pem)
	byLeaf := map[string]*pair{}
	for _, c := range chains {
		if cur, ok := byLeaf[c.fingerprint]; !ok || len(c.certs) > len(cur.certs) {
			byLeaf[c.fingerprint] = c
		}
	}
	var pairs []*pair
	for _, c := range byLeaf {
		// the key of the leaf; or of another certificate of the file (a
		// chain out of order, which the API then names)
		found := false
		for _, cert := range c.certs {
			pub, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
			if k, ok := keys[string(pub)]; err == nil && ok {
				c.keyFile, c.keyPEM, c.leaf, found = k.file, k.pem, cert, true
				break
			}
		}
		if !found {
			if !c.leaf.IsCA { // a CA bundle (chain.pem) needs no key
				problems = append(problems, problem{File: c.certFile, Code: "KEY_MISSING",
					Msg: "no private key in the directory matches this certificate (" + c.leaf.Subject.CommonName + ")"})
			}
			continue
		}
		pairs = append(pairs, c)
	}
	// the later a certificate ends, the later it is attached, so that it
	// wins the names it shares with older ones
	sort.Slice(pairs, func(i, j int) bool {
		if !pairs[i].leaf.NotAfter.Equal(pairs[j].leaf.NotAfter) {
			return pairs[i].leaf.NotAfter.Before(pairs[j].leaf.NotAfter)
		}
		return pairs[i].certFile < pairs[j].certFile
	})
	return &scanned{pairs: pairs, problems: problems, skipped: skipped}, nil
}

// importSummary is what import did.
type importSummary struct {
	Pairs           int `json:"pairs"`
	Uploaded        int `json:"uploaded"`
	AlreadyUploaded int `json:"already_uploaded"`
	DomainsCreated  int `json:"domains_created"`
	DomainsUpdated  int `json:"domains_updated"`
	DomainsKept     int `json:"domains_unchanged"`
	// Expired counts certificates skipped because they have ended.
	Expired  int       `json:"expired_skipped"`
	Problems []problem `json:"problems"`
	// Skipped are the files that held nothing to import; they do not
	// fail the run.
	Skipped []skip  `json:"skipped"`
	Seconds float64 `json:"seconds"`
	// UploadSeconds and AttachSeconds time the two phases.
	UploadSeconds float64 `json:"upload_seconds"`
	AttachSeconds float64 `json:"attach_seconds"`
}

func runImport(e *env) (int, error) {
	if e.fl.Bool("from-storage") {
		return e.importFromStorage(e.args)
	}
	if len(e.args) != 1 {
		return exitUsage, &usageError{fmt.Errorf("import takes one directory (or --from-storage and names)")}
	}
	start := time.Now()
	found, err := scan(e.args[0])
	if err != nil {
		return exitUsage, &usageError{err}
	}
	pairs := found.pairs
	sum := importSummary{Pairs: len(pairs), Problems: found.problems, Skipped: found.skipped}
	dry := e.fl.Bool("dry-run")
	parallel := max(1, e.fl.Int("parallel"))
	prog := &progress{w: e.errw, every: time.Second}

	// what is there already: certificates by fingerprint, domains by name
	certs, err := e.c.list(e.ctx, "tls_certificates", "")
	if err != nil {
		return exitRefused, err
	}
	type have struct {
		id       string
		notAfter time.Time
	}
	byFingerprint := map[string]have{}
	byID := map[string]have{}
	for _, c := range certs {
		na, _ := time.Parse(time.RFC3339, str(c, "not_after"))
		h := have{id: str(c, "id"), notAfter: na}
		byFingerprint[str(c, "fingerprint")], byID[h.id] = h, h
	}
	domains, err := e.c.list(e.ctx, "domains", "")
	if err != nil {
		return exitRefused, err
	}
	byName := map[string]object{}
	for _, d := range domains {
		byName[str(d, "domain")] = d
	}

	// the plan: each name gets the unexpired pair that ends last among
	// those covering it (pairs are sorted by end), unless the name is
	// managed or has a certificate that ends as late
	now := time.Now()
	want := map[string]int{}
	for i, p := range pairs {
		if !now.Before(p.leaf.NotAfter) {
			sum.Expired++
			continue
		}
		for _, n := range p.leaf.DNSNames {
			want[strings.ToLower(strings.TrimSuffix(n, "."))] = i
		}
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	type job struct {
		name, method, uri string
		pair              int
		created           bool
	}
	var jobs []job
	needed := map[int]bool{}
	for _, n := range names {
		i := want[n]
		p := pairs[i]
		d, exists := byName[n]
		switch {
		case !exists:
			jobs = append(jobs, job{name: n, method: "POST", uri: "/domaincerts/domains", pair: i, created: true})
		case d["certificate_management_policy"] != nil:
			sum.DomainsKept++ // managed: CertMagic's certificates serve it
			continue
		default:
			cur := ""
			if c, ok := d["certificate"].(map[string]any); ok {
				cur = str(c, "id")
			}
			if h, ok := byFingerprint[p.fingerprint]; ok && h.id == cur {
				sum.DomainsKept++
				continue
			}
			if cur != "" && !p.leaf.NotAfter.After(byID[cur].notAfter) {
				sum.DomainsKept++
				continue
			}
			jobs = append(jobs, job{name: n, method: "PATCH", uri: "/domaincerts/domains/" + str(d, "id"), pair: i})
		}
		needed[i] = true
	}

	// uploads: the pairs the plan uses that are not there yet
	uploadStart := time.Now()
	var mu sync.Mutex
	unreachable := false
	fail := func(file string, err error) {
		sum.Problems = append(sum.Problems, problemOf(file, err))
		var ue errUnreachable
		var ae *apiError
		if errors.As(err, &ue) || (errors.As(err, &ae) && ae.Status >= 500) {
			unreachable = true
		}
	}
	certIDs := make([]string, len(pairs))
	var toUpload []int
	for i, p := range pairs {
		if h, ok := byFingerprint[p.fingerprint]; ok {
			certIDs[i] = h.id
			sum.AlreadyUploaded++
		} else if needed[i] {
			toUpload = append(toUpload, i)
		}
	}
	if dry {
		sum.Uploaded = len(toUpload)
	} else {
		var done atomic.Int64
		inParallel(parallel, len(toUpload), func(k int) {
			i := toUpload[k]
			p := pairs[i]
			var c object
			err := e.c.do(e.ctx, "POST", "/domaincerts/tls_certificates",
				map[string]any{"certificate_pem": p.chainPEM, "private_key_pem": p.keyPEM}, &c)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fail(p.certFile, err)
			} else {
				certIDs[i] = str(c, "id")
				sum.Uploaded++
			}
			prog.show("import: uploaded %d of %d certificates", done.Add(1), len(toUpload))
		})
	}
	sum.UploadSeconds = time.Since(uploadStart).Seconds()

	// attachments
	attachStart := time.Now()
	if dry {
		for _, j := range jobs {
			if j.created {
				sum.DomainsCreated++
			} else {
				sum.DomainsUpdated++
			}
		}
	} else {
		var done atomic.Int64
		inParallel(parallel, len(jobs), func(k int) {
			j := jobs[k]
			id := certIDs[j.pair]
			if id == "" {
				return // its upload failed, and is reported
			}
			body := map[string]any{"certificate_id": id}
			if j.created {
				body["domain"] = j.name
			}
			err := e.c.do(e.ctx, j.method, j.uri, body, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				fail(pairs[j.pair].certFile+" ("+j.name+")", err)
			case j.created:
				sum.DomainsCreated++
			default:
				sum.DomainsUpdated++
			}
			prog.show("import: attached %d of %d domains", done.Add(1), len(jobs))
		})
	}
	sum.AttachSeconds = time.Since(attachStart).Seconds()
	sum.Seconds = time.Since(start).Seconds()
	code, err := e.importDone(sum, dry)
	if unreachable && err != nil {
		return exitUnreachable, err
	}
	return code, err
}

// inParallel calls fn(0..n-1) from workers goroutines and waits for them.
func inParallel(workers, n int, fn func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(workers, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fn(i)
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

// importDone prints the summary; any problem makes exit code 1, skipped
// files do not.
func (e *env) importDone(sum importSummary, dry bool) (int, error) {
	if sum.Problems == nil {
		sum.Problems = []problem{}
	}
	if sum.Skipped == nil {
		sum.Skipped = []skip{}
	}
	sort.Slice(sum.Problems, func(i, j int) bool { return sum.Problems[i].File < sum.Problems[j].File })
	sort.Slice(sum.Skipped, func(i, j int) bool { return sum.Skipped[i].File < sum.Skipped[j].File })
	if e.json {
		if err := e.printJSON(sum); err != nil {
			return exitRefused, err
		}
	} else {
		verb := ""
		if dry {
			verb = " (dry run: nothing changed)"
		}
		fmt.Fprintf(e.out, "import: %d certificate/key pairs: %d uploaded, %d already there; domains: %d created, %d updated, %d unchanged; %d problems; %d files skipped; %.1fs%s\n",
			sum.Pairs, sum.Uploaded, sum.AlreadyUploaded, sum.DomainsCreated, sum.DomainsUpdated, sum.DomainsKept, len(sum.Problems), len(sum.Skipped), sum.Seconds, verb)
		if sum.Uploaded > 0 && sum.UploadSeconds > 0 && !dry {
			fmt.Fprintf(e.out, "import: %.0f uploads/s, %.0f domain writes/s\n", float64(sum.Uploaded)/sum.UploadSeconds,
				float64(sum.DomainsCreated+sum.DomainsUpdated)/max(sum.AttachSeconds, 1e-9))
		}
		for _, p := range sum.Problems {
			fmt.Fprintf(e.out, "  %s: %s: %s\n", p.File, p.Code, p.Msg)
		}
		for _, s := range sum.Skipped {
			fmt.Fprintf(e.out, "  %s: skipped: %s\n", s.File, s.Reason)
		}
	}
	if len(sum.Problems) > 0 {
		return exitRefused, fmt.Errorf("import: %d problems (listed above)", len(sum.Problems))
	}
	return exitOK, nil
}

func problemOf(file string, err error) problem {
	if ae, ok := err.(*apiError); ok {
		return problem{File: file, Code: ae.Code, Msg: ae.Msg}
	}
	var de *dcerr.Error
	if errors.As(err, &de) { // found before the upload, as the API would
		return problem{File: file, Code: string(de.Code), Msg: de.Msg}
	}
	return problem{File: file, Code: "FAILED", Msg: err.Error()}
}

// importFromStorage makes managed domains of the unexpired certificates
// CertMagic keeps in the running Caddy's storage (of the names given, if
// any), which they adopt: the same certificates keep serving.
func (e *env) importFromStorage(only []string) (int, error) {
	start := time.Now()
	var resp struct {
		Stored []struct {
			Domain         string    `json:"domain"`
			Authority      *string   `json:"authority"`
			PrivateKeyType string    `json:"private_key_type"`
			NotAfter       time.Time `json:"not_after"`
			Issuer         string    `json:"issuer_common_name"`
			DomainID       *string   `json:"domain_id"`
		} `json:"stored_certificates"`
	}
	if err := e.c.do(e.ctx, "GET", "/domaincerts/stored_certificates", nil, &resp); err != nil {
		return exitRefused, err
	}
	sum := importSummary{}
	// one per name: the latest unexpired one whose issuer is an authority
	type candidate struct {
		authority, keyType, issuer string
		registered                 bool
		expired                    int
	}
	cands := map[string]*candidate{}
	var names []string
	for _, s := range resp.Stored {
		if len(only) > 0 && !slices.Contains(only, s.Domain) {
			continue
		}
		c, seen := cands[s.Domain]
		if !seen {
			c = &candidate{issuer: s.Issuer}
			cands[s.Domain] = c
			names = append(names, s.Domain)
		}
		c.registered = c.registered || s.DomainID != nil
		switch {
		case !time.Now().Before(s.NotAfter):
			c.expired++
		case s.Authority != nil && c.authority == "":
			c.authority, c.keyType = *s.Authority, s.PrivateKeyType
		}
	}
	for _, n := range only {
		if _, ok := cands[n]; !ok {
			sum.Problems = append(sum.Problems, problem{File: n, Code: "NOT_FOUND", Msg: "CertMagic keeps no certificate for this name in Caddy's storage"})
		}
	}
	slices.Sort(names)
	sum.Pairs = len(names)
	for _, n := range names {
		c := cands[n]
		switch {
		case c.registered:
			sum.DomainsKept++
		case c.authority == "" && c.expired > 0:
			sum.Expired++ // nothing left to serve
		case c.authority == "":
			sum.Problems = append(sum.Problems, problem{File: n, Code: "POLICY_INVALID",
				Msg: fmt.Sprintf("no authority of this config issued it (issuer %q); add an issuer for that CA to the domaincerts app and import again", c.issuer)})
		case c.keyType != "ecdsa" && c.keyType != "rsa":
			sum.Problems = append(sum.Problems, problem{File: n, Code: "POLICY_INVALID",
				Msg: fmt.Sprintf("its %s key is not a key type a policy can ask for", c.keyType)})
		case e.fl.Bool("dry-run"):
			sum.DomainsCreated++
		default:
			err := e.c.do(e.ctx, "POST", "/domaincerts/stored_certificates", map[string]any{"domain": n}, nil)
			switch {
			case isCode(err, "DOMAIN_EXISTS"):
				sum.DomainsKept++
			case err != nil:
				sum.Problems = append(sum.Problems, problemOf(n, err))
			default:
				sum.DomainsCreated++
			}
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	return e.importDone(sum, e.fl.Bool("dry-run"))
}
