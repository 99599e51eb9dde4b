// SPDX-License-Identifier: BSD-3-Clause
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title TestDollar
/// @notice A 6-decimal stablecoin stand-in for devnets and tests, with EIP-2612 permit.
///         Only the owner (the devnet deployer) can mint.
contract TestDollar is ERC20, ERC20Permit, Ownable {
    constructor(address owner_) ERC20("Test Dollar", "TUSD") ERC20Permit("Test Dollar") Ownable(owner_) {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
