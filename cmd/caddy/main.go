// Command caddy is Caddy with the standard modules and the domaincerts plugin,
// for `go build ./cmd/caddy` without xcaddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/domaincerts/caddy-domaincerts"
)

func main() {
	caddycmd.Main()
}
