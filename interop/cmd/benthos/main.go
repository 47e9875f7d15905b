// Command benthos is a Benthos v4 (github.com/redpanda-data/benthos) binary
// with its pure and io components only: generate, archive, compress and the
// http_client output are what the interop tests drive against the aggregator.
package main

import (
	"context"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background())
}
