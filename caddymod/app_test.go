package caddymod

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		app     App
		wantErr string
	}{
		{"defaults", App{DefaultAuthority: "letsencrypt"}, ""},
		{"cache bounds", App{DefaultAuthority: "letsencrypt", CacheCapacity: 100, CacheMemory: 512 << 20}, ""},
		{"smallest cache_memory", App{DefaultAuthority: "letsencrypt", CacheMemory: 1 << 20}, ""},
		{"negative cache_capacity", App{DefaultAuthority: "letsencrypt", CacheCapacity: -1}, "cache_capacity must not be negative"},
		{"negative cache_memory", App{DefaultAuthority: "letsencrypt", CacheMemory: -1}, "cache_memory must not be negative"},
		{"hot_certificates below -1", App{DefaultAuthority: "letsencrypt", HotCertificates: -2}, "hot_certificates must be -1 (off)"},
		{"cache_memory in the wrong unit", App{DefaultAuthority: "letsencrypt", CacheMemory: 512}, "it is in bytes"},
		{"unknown authority", App{DefaultAuthority: "nope"}, `default_authority "nope" names no issuer`},
		{"issuer named", App{DefaultAuthority: "local", Issuers: map[string]json.RawMessage{"local": json.RawMessage(`{"module":"internal"}`)}}, ""},
		{"renewal ratio", App{DefaultAuthority: "letsencrypt", RenewalWindowRatio: 1}, "renewal_window_ratio"},
		{"dns_server without zone", App{DefaultAuthority: "letsencrypt", DNSServer: &DNSServerConfig{}}, "dns_server needs challenge_zone"},
		{"wildcard zone", App{DefaultAuthority: "letsencrypt", Zones: []string{"*.example.net"}}, "without a wildcard"},
		{"sync_interval", App{DefaultAuthority: "letsencrypt", SyncInterval: caddy.Duration(500 * time.Millisecond), StorageTimeout: caddy.Duration(5 * time.Second)}, ""},
		{"sync_interval too short", App{DefaultAuthority: "letsencrypt", SyncInterval: caddy.Duration(10 * time.Millisecond)}, "sync_interval must be at least 50ms"},
		{"negative sync_interval", App{DefaultAuthority: "letsencrypt", SyncInterval: -1}, "sync_interval must be at least 50ms"},
		{"negative storage_timeout", App{DefaultAuthority: "letsencrypt", StorageTimeout: -1}, "storage_timeout must not be negative"},
		{"delegate all", App{DefaultAuthority: "letsencrypt", DelegateDNS01: "all", ChallengeZone: "acme.example.net"}, ""},
		{"delegate all without a zone", App{DefaultAuthority: "letsencrypt", DelegateDNS01: "all"}, `delegate_dns01 "all" needs challenge_zone`},
		{"delegate unknown", App{DefaultAuthority: "letsencrypt", DelegateDNS01: "some"}, `delegate_dns01 must be "wildcards" or "all"`},
		{"edge addresses", App{DefaultAuthority: "letsencrypt", EdgeAddresses: []string{"203.0.113.10", "2001:db8::10"}}, ""},
		{"edge address not an IP", App{DefaultAuthority: "letsencrypt", EdgeAddresses: []string{"edge.example.net"}}, `edge_addresses: "edge.example.net" is not an IP address`},
		{"negative provisioning_timeout", App{DefaultAuthority: "letsencrypt", ProvisioningTimeout: -1}, "provisioning_timeout must not be negative"},
		{"expiry_check_interval too short", App{DefaultAuthority: "letsencrypt", ExpiryCheckInterval: caddy.Duration(time.Millisecond)}, "expiry_check_interval must be at least 1s"},
		{"negative expiry_check_interval", App{DefaultAuthority: "letsencrypt", ExpiryCheckInterval: -1}, "expiry_check_interval must be at least 1s"},
		{"negative expiry_warning", App{DefaultAuthority: "letsencrypt", ExpiryWarning: -1}, "expiry_warning must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// what Provision sets: the names of the issuers, or the default
			tt.app.issuerNames = slices.Sorted(maps.Keys(tt.app.Issuers))
			if len(tt.app.issuerNames) == 0 {
				tt.app.issuerNames = []string{"letsencrypt"}
			}
			err := tt.app.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
