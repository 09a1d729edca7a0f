// Command testcaddy is Caddy with the domaincerts plugin and the
// integration tests' own modules (a Redis storage, a DNS provider that
// writes into the test resolver, an event recorder), for the tests that need
// them. The plugin itself never contains these modules.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/domaincerts/caddy-domaincerts"
	_ "github.com/domaincerts/caddy-domaincerts/integration/redisstorage"
	_ "github.com/domaincerts/caddy-domaincerts/integration/testdnsprovider"
	_ "github.com/domaincerts/caddy-domaincerts/integration/testevents"
)

func main() {
	caddycmd.Main()
}
