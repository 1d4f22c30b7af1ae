package exporter

import (
	"github.com/google/uuid"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// Upstream Jumpstarter's client builds its driver tree from GetReport: one report per
// driver, parents before children, each naming in its labels the client class that
// drives it (LabelClient) and its name under its parent (LabelName). Upstream's CLI
// (`j`) then offers one subcommand per child: `j power on`, `j serial pipe`.
const (
	LabelClient = "jumpstarter.dev/client"
	LabelName   = "jumpstarter.dev/name"

	// Upstream's client classes for the interfaces a board offers.
	ClientComposite = "jumpstarter_driver_composite.client.CompositeClient"
	ClientPower     = "jumpstarter_driver_power.client.PowerClient"
	ClientSerial    = "jumpstarter_driver_pyserial.client.PySerialClient"

	// The names of a board's drivers in the tree upstream clients see. The console is
	// "serial", as upstream's exporters usually name a PySerial driver, so that
	// upstream's habits (`j serial pipe`) work unchanged.
	TreePower  = "power"
	TreeSerial = "serial"
)

// Inventory says which drivers a board has.
type Inventory struct {
	Power, Console bool
}

// Inventories is implemented by a Drivers that can say which drivers each board has
// (the devices manager). Without it every board is reported with both.
type Inventories interface {
	Inventory(board string) Inventory
}

// Driver kinds of a board, as the tree names them internally.
const (
	driverRoot    = "root"
	driverPower   = "power"
	driverConsole = "console"
)

// namespace is boardvisor's own UUID namespace: every UUID upstream clients see is a
// name-based (version 5) UUID in it, derived from the board's name and the driver's,
// so it is the same after every restart of the supervisor and on every host that
// serves a board of that name.
var namespace = uuid.MustParse("0f4f530f-df27-40f1-aa4e-ecd62bd3258e")

// BoardUUID is the exporter UUID of a board (GetReport.uuid).
func BoardUUID(board string) string {
	return uuid.NewSHA1(namespace, []byte("board\x00"+board)).String()
}

// DriverUUID is the UUID of one of a board's drivers ("root", "power", "console").
func DriverUUID(board, driver string) string {
	return uuid.NewSHA1(namespace, []byte("driver\x00"+board+"\x00"+driver)).String()
}

// driverOf returns which of the board's drivers id names: a driver UUID of this
// board, or boardvisor's own names ("power", "console"). ok is false for anything
// else.
func driverOf(board, id string, inv Inventory) (driver string, byUUID, ok bool) {
	switch id {
	case driverPower, driverConsole:
		return id, false, true
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return "", false, false
	}
	for _, d := range []string{driverRoot, driverPower, driverConsole} {
		if u.String() == DriverUUID(board, d) && (d == driverRoot || d == driverPower && inv.Power || d == driverConsole && inv.Console) {
			return d, true, true
		}
	}
	return "", false, false
}

func (s *Service) inventory(board string) Inventory {
	if i, ok := s.drivers.(Inventories); ok {
		return i.Inventory(board)
	}
	return Inventory{Power: true, Console: true}
}

// report builds a board's GetReport answer: the board as a composite root with its
// power and serial drivers as children, in upstream's order (parents first).
func (s *Service) report(b *boardState, motd string) *jpb.GetReportResponse {
	inv := s.inventory(b.name)
	root := DriverUUID(b.name, driverRoot)
	desc := func(s string) *string { return &s }
	reports := []*jpb.DriverInstanceReport{{
		Uuid:        root,
		Labels:      map[string]string{LabelClient: ClientComposite},
		Description: desc("boardvisor board " + b.name),
	}}
	if inv.Power {
		reports = append(reports, &jpb.DriverInstanceReport{
			Uuid: DriverUUID(b.name, driverPower), ParentUuid: &root,
			Labels:      map[string]string{LabelClient: ClientPower, LabelName: TreePower},
			Description: desc("Power control of " + b.name),
			MethodsDescription: map[string]string{
				"on":  "Power on",
				"off": "Power off",
			},
		})
	}
	if inv.Console {
		reports = append(reports, &jpb.DriverInstanceReport{
			Uuid: DriverUUID(b.name, driverConsole), ParentUuid: &root,
			Labels:      map[string]string{LabelClient: ClientSerial, LabelName: TreeSerial},
			Description: desc("Serial console of " + b.name),
			MethodsDescription: map[string]string{
				"connect": "Read and write the console (a byte stream)",
				"close":   "Close this lease's open console streams",
			},
		})
	}
	labels := map[string]string{}
	for k, v := range b.labels {
		labels[k] = v
	}
	return &jpb.GetReportResponse{Uuid: BoardUUID(b.name), Labels: labels, Reports: reports, Motd: motd}
}
