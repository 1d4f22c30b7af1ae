package drivers_test

import (
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/power"
	"github.com/boardvisor/boardvisor/drivers/qemu"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
)

// The drivers fit the actor that runs them and the interfaces the board uses.
var (
	_ driver.Driver   = drivers.Driver(nil)
	_ driver.Driver   = drivers.Console(nil)
	_ drivers.Console = (*serial.Driver)(nil)
	_ drivers.Power   = (*power.Controller)(nil)
	_ drivers.Power   = (*virtual.Board)(nil)
	_ drivers.Power   = (*qemu.Board)(nil)
)
