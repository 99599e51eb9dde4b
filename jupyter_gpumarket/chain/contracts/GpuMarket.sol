// SPDX-License-Identifier: BSD-3-Clause
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title GpuMarket
/// @notice A reverse auction for GPU time with per-second streaming escrow.
///
/// Flow: providers register with a stake; a tenant creates an order and deposits
/// escrow; providers bid at or under the order's max price during the bidding
/// window; the tenant accepts bids, each becoming a lease with its own slice of
/// the escrow; the lease streams price x gpus x seconds / 3600 to the provider,
/// who withdraws at any time after the attestation grace period; the lease closes
/// early (tenant), at its end, or when its deposit runs dry, and the rest is refunded.
///
/// Invariant, per lease: paid to provider + fee + refunded to tenant == deposit.
/// The contract holds exactly: stakes + unallocated order escrow + open lease balances.
///
/// Storage is kept small on the hot paths: a bid is one slot, and the bid's slot is
/// reused by the lease it becomes (bid id == lease id). Strings live in events only.
contract GpuMarket is AccessControl, Pausable, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    uint16 public constant MAX_FEE_BPS = 1_000; // 10%
    uint256 private constant SECONDS_PER_HOUR = 3600;
    bytes32 public constant HEARTBEAT_TYPEHASH =
        keccak256("Heartbeat(uint256 leaseId,uint64 seq,uint64 timestamp,uint16 gpuUtilBps)");

    enum DealStatus {
        None,
        Bid, // placed, waiting for the tenant
        BidWithdrawn,
        Active, // accepted: a lease, streaming
        Closed, // settled
        Rejected // failed attestation, fully refunded
    }

    /// A bid, and once accepted, the lease it became. First slot only for bids.
    struct Deal {
        // slot 0 (written by placeBid)
        uint32 providerId;
        uint64 orderId;
        uint96 pricePerGpuHour;
        uint16 gpus;
        DealStatus status;
        uint40 startedAt;
        // slot 1 (written by acceptBids)
        uint104 deposit;
        uint104 withdrawn; // gross, fee included
        uint40 endsAt;
        bool disputed;
    }

    struct Order {
        // slot 0
        address tenant;
        uint80 maxPricePerGpuHour;
        uint16 classId; // 0 = paid by the tenant; else drawn from a class allowance
        // slot 1
        uint16 gpus;
        uint16 gpusLeased;
        uint32 duration;
        uint40 biddingEndsAt;
        bool open;
        uint128 escrow; // deposit not yet allocated to a lease
    }

    /// A sponsor's pool (an instructor's class budget) that students draw on up to their caps.
    struct Class {
        address sponsor;
        uint128 balance; // not yet drawn
    }

    struct Allowance {
        uint128 cap;
        uint128 drawn; // deposits taken from the pool, less what came back
    }

    struct Provider {
        // slot 0
        address owner;
        uint16 openLeases;
        uint16 openDisputes;
        uint16 gpuCount;
        bool active;
        uint32 leasesCompleted; // here, not in slot 1: closeLease then writes one slot
        // slot 1
        uint128 stake;
        uint40 unstakeReadyAt; // 0 = no unstake requested
        uint32 leasesRejected;
        uint16 disputesLost;
        uint16 leasesDropped; // closed at the provider's last heartbeat: its workers went silent
        // slot 2
        uint32 memoryGiB;
        uint32 tflopsX100;
    }

    struct HardwareClaim {
        string gpuModel;
        uint16 gpuCount;
        uint32 memoryGiB;
        uint32 tflopsX100; // claimed dense throughput, TFLOPS x 100
    }

    /// Signed by the provider's account (EIP-712) every few seconds while its workers live.
    struct Heartbeat {
        uint256 leaseId;
        uint64 seq;
        uint64 timestamp;
        uint16 gpuUtilBps;
    }

    struct OrderParams {
        uint16 gpus;
        uint32 minMemoryGiB;
        uint80 maxPricePerGpuHour;
        uint32 duration; // seconds of lease
        uint32 biddingWindow; // seconds
        uint128 deposit;
        bytes32 tenantCertFingerprint;
        string gpuModel; // regular expression over model names, "" = any
        string region; // "" = any
    }

    // ---- refusals -------------------------------------------------------
    error ZeroAddress();
    error ZeroGpus();
    error ZeroDuration();
    error ZeroBiddingWindow();
    error ZeroPrice();
    error ZeroAmount();
    error FeeTooHigh(uint16 bps, uint16 maxBps);
    error StakeTooLow(uint256 stake, uint256 minStake);
    error AlreadyRegistered(address account, uint32 providerId);
    error NotRegistered(address account);
    error ProviderInactive(uint32 providerId);
    error UnstakeNotRequested(uint32 providerId);
    error UnstakeNotReady(uint40 readyAt);
    error ProviderBusy(uint16 openLeases, uint16 openDisputes);
    error OrderNotFound(uint64 orderId);
    error NotOrderTenant(uint64 orderId, address caller);
    error OrderNotOpen(uint64 orderId);
    error BiddingClosed(uint64 orderId, uint40 biddingEndedAt);
    error PriceAboveMax(uint96 price, uint96 maxPrice);
    error TooManyGpus(uint16 requested, uint16 available);
    error DuplicateBid(uint64 orderId, uint256 bidId);
    error BidNotFound(uint256 bidId);
    error NotBidProvider(uint256 bidId, address caller);
    error BidNotLive(uint256 bidId);
    error BidNotForOrder(uint256 bidId, uint64 orderId);
    error EscrowExhausted(uint64 orderId);
    error LeaseNotFound(uint256 leaseId);
    error LeaseNotActive(uint256 leaseId);
    error LeaseEnded(uint256 leaseId, uint40 endedAt);
    error LeaseNotEnded(uint256 leaseId, uint40 endsAt);
    error NotLeaseTenant(uint256 leaseId, address caller);
    error NotLeaseParty(uint256 leaseId, address caller);
    error NotLeaseProvider(uint256 leaseId, address caller);
    error GracePeriodActive(uint256 leaseId, uint40 until);
    error GracePeriodOver(uint256 leaseId, uint40 endedAt);
    error NothingToWithdraw(uint256 leaseId);
    error DisputeAlreadyOpen(uint256 leaseId);
    error NoOpenDispute(uint256 leaseId);
    error DisputeWindowOver(uint256 leaseId, uint40 closedAt);
    error InvalidHeartbeat(uint256 leaseId, address signer);
    error EmptyReceiptRoot(uint256 leaseId);
    error ReceiptRootAlreadyPosted(uint256 leaseId, bytes32 root);
    error ClassNotFound(uint16 classId);
    error NotClassSponsor(uint16 classId, address caller);
    error AllowanceExceeded(uint16 classId, address student, uint128 remaining, uint128 needed);
    error ClassFundsLow(uint16 classId, uint128 balance, uint128 needed);

    // ---- state changes --------------------------------------------------
    event ProviderRegistered(
        uint32 indexed providerId,
        address indexed owner,
        uint128 stake,
        HardwareClaim claim,
        string region,
        string endpoint
    );
    event ProviderUpdated(uint32 indexed providerId, HardwareClaim claim, string region, string endpoint);
    event StakeAdded(uint32 indexed providerId, uint128 amount, uint128 stake);
    event UnstakeRequested(uint32 indexed providerId, uint40 readyAt);
    event Unstaked(uint32 indexed providerId, uint128 amount);
    event OrderCreated(
        uint64 indexed orderId,
        address indexed tenant,
        uint16 gpus,
        uint32 minMemoryGiB,
        uint80 maxPricePerGpuHour,
        uint32 duration,
        uint40 biddingEndsAt,
        uint128 deposit,
        bytes32 tenantCertFingerprint,
        string gpuModel,
        string region
    );
    event OrderClosed(uint64 indexed orderId, uint128 refunded);
    event BidPlaced(
        uint256 indexed bidId,
        uint64 indexed orderId,
        uint32 indexed providerId,
        uint96 pricePerGpuHour,
        uint16 gpus,
        bytes32 certFingerprint,
        string endpoint
    );
    event BidWithdrawn(uint256 indexed bidId, uint64 indexed orderId);
    event LeaseCreated(
        uint256 indexed leaseId,
        uint64 indexed orderId,
        uint32 indexed providerId,
        uint96 pricePerGpuHour,
        uint16 gpus,
        uint104 deposit,
        uint40 startedAt,
        uint40 endsAt
    );
    event LeaseToppedUp(uint256 indexed leaseId, uint104 amount, uint104 deposit, uint40 endsAt);
    event PaymentWithdrawn(uint256 indexed leaseId, uint32 indexed providerId, uint104 amount, uint104 fee);
    /// `accrued` is the lease's gross total; `paid` and `fee` are what this settlement
    /// sent (earlier withdrawals are in PaymentWithdrawn events).
    event LeaseClosed(
        uint256 indexed leaseId,
        address indexed closedBy,
        uint104 accrued,
        uint104 paid,
        uint104 fee,
        uint104 refunded,
        uint40 endedAt
    );
    event LeaseRejected(uint256 indexed leaseId, bytes32 reasonHash, uint104 refunded);
    event DisputeOpened(uint256 indexed leaseId, bytes32 evidenceHash);
    /// Merkle root (sorted-pair keccak) over the EIP-712 struct hashes of the lease's `count` execution receipts.
    event ReceiptRootPosted(uint256 indexed leaseId, uint32 indexed providerId, bytes32 root, uint32 count);
    event DisputeResolved(uint256 indexed leaseId, bool providerAtFault, uint128 slashed);
    event ClassCreated(uint16 indexed classId, address indexed sponsor, uint128 balance);
    event ClassFunded(uint16 indexed classId, uint128 amount, uint128 balance);
    event ClassWithdrawn(uint16 indexed classId, uint128 amount, uint128 balance);
    event AllowanceSet(uint16 indexed classId, address indexed student, uint128 cap);
    event ClassDrawn(uint16 indexed classId, address indexed student, uint128 amount, uint128 drawn);
    event ClassRefunded(uint16 indexed classId, address indexed student, uint128 amount, uint128 drawn);
    event FeeChanged(uint16 bps, address treasury);
    event ParamsChanged(uint128 minStake, uint32 unstakeDelay, uint32 disputeWindow);

    IERC20 public immutable token;
    /// Seconds after a lease starts during which the tenant may reject it with a full refund.
    /// Immutable: withdraw() reads it on every call, and a deployment constant costs no storage read.
    uint32 public immutable attestationGrace;

    uint128 public minStake;
    uint32 public unstakeDelay;
    uint32 public disputeWindow;

    address public treasury;
    uint16 public feeBps; // same slot as treasury: one read when paying a fee

    // One slot for the three counters, so each increment is a warm-ish nonzero write.
    uint64 public orderCount;
    uint32 public providerCount;
    uint128 public bidCount;
    uint16 public classCount;

    mapping(uint32 => Provider) private _providers;
    mapping(address => uint32) public providerIdOf;
    mapping(uint64 => Order) private _orders;
    mapping(uint256 => Deal) private _deals;
    /// orderId => providerId => live bid id (0 = none): one live bid per provider per order.
    mapping(uint64 => mapping(uint32 => uint256)) public bidOf;
    mapping(uint16 => Class) private _classes;
    mapping(uint16 => mapping(address => Allowance)) private _allowances;
    /// leaseId => the provider's receipt root (posted once; a dispute's evidence can be proven against it).
    mapping(uint256 => bytes32) public receiptRootOf;

    constructor(
        IERC20 token_,
        address admin,
        uint128 minStake_,
        uint32 unstakeDelay_,
        uint32 attestationGrace_,
        uint32 disputeWindow_
    ) EIP712("GpuMarket", "1") {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        token = token_;
        treasury = admin;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(ARBITER_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        attestationGrace = attestationGrace_;
        _setParams(minStake_, unstakeDelay_, disputeWindow_);
    }

    // =====================================================================
    // Administration
    // =====================================================================

    function setParams(uint128 minStake_, uint32 unstakeDelay_, uint32 disputeWindow_)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        _setParams(minStake_, unstakeDelay_, disputeWindow_);
    }

    function _setParams(uint128 minStake_, uint32 unstakeDelay_, uint32 disputeWindow_) private {
        minStake = minStake_;
        unstakeDelay = unstakeDelay_;
        disputeWindow = disputeWindow_;
        emit ParamsChanged(minStake_, unstakeDelay_, disputeWindow_);
    }

    function setFee(uint16 bps, address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (bps > MAX_FEE_BPS) revert FeeTooHigh(bps, MAX_FEE_BPS);
        if (treasury_ == address(0)) revert ZeroAddress();
        feeBps = bps;
        treasury = treasury_;
        emit FeeChanged(bps, treasury_);
    }

    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // =====================================================================
    // Provider registry
    // =====================================================================

    function registerProvider(HardwareClaim calldata claim, string calldata region, string calldata endpoint, uint128 stake)
        external
        whenNotPaused
        nonReentrant
        returns (uint32 providerId)
    {
        uint32 existing = providerIdOf[msg.sender];
        if (existing != 0) revert AlreadyRegistered(msg.sender, existing);
        if (stake < minStake) revert StakeTooLow(stake, minStake);
        if (claim.gpuCount == 0) revert ZeroGpus();
        providerId = ++providerCount;
        providerIdOf[msg.sender] = providerId;
        Provider storage p = _providers[providerId];
        p.owner = msg.sender;
        p.gpuCount = claim.gpuCount;
        p.active = true;
        p.stake = stake;
        p.memoryGiB = claim.memoryGiB;
        p.tflopsX100 = claim.tflopsX100;
        if (stake > 0) token.safeTransferFrom(msg.sender, address(this), stake);
        emit ProviderRegistered(providerId, msg.sender, stake, claim, region, endpoint);
    }

    function updateProvider(HardwareClaim calldata claim, string calldata region, string calldata endpoint) external {
        uint32 providerId = _callerProviderId();
        if (claim.gpuCount == 0) revert ZeroGpus();
        Provider storage p = _providers[providerId];
        p.gpuCount = claim.gpuCount;
        p.memoryGiB = claim.memoryGiB;
        p.tflopsX100 = claim.tflopsX100;
        emit ProviderUpdated(providerId, claim, region, endpoint);
    }

    function addStake(uint128 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint32 providerId = _callerProviderId();
        Provider storage p = _providers[providerId];
        // Stake added after unstaking could never leave again: refuse it.
        if (!p.active) revert ProviderInactive(providerId);
        p.stake += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit StakeAdded(providerId, amount, p.stake);
    }

    /// Stop bidding now; the stake can be taken back once no lease or dispute is open,
    /// after `unstakeDelay` and never before tenants' dispute windows have passed.
    function requestUnstake() external {
        uint32 providerId = _callerProviderId();
        Provider storage p = _providers[providerId];
        if (!p.active) revert ProviderInactive(providerId);
        p.active = false;
        uint32 delay = unstakeDelay > disputeWindow ? unstakeDelay : disputeWindow;
        uint40 readyAt = uint40(block.timestamp) + delay;
        p.unstakeReadyAt = readyAt;
        emit UnstakeRequested(providerId, readyAt);
    }

    function completeUnstake() external nonReentrant {
        uint32 providerId = _callerProviderId();
        Provider storage p = _providers[providerId];
        if (p.unstakeReadyAt == 0) revert UnstakeNotRequested(providerId);
        if (block.timestamp < p.unstakeReadyAt) revert UnstakeNotReady(p.unstakeReadyAt);
        if (p.openLeases != 0 || p.openDisputes != 0) revert ProviderBusy(p.openLeases, p.openDisputes);
        uint128 amount = p.stake;
        p.stake = 0;
        p.unstakeReadyAt = 0;
        // Leave the id with its reputation; the account may not register again.
        if (amount > 0) token.safeTransfer(msg.sender, amount);
        emit Unstaked(providerId, amount);
    }

    // =====================================================================
    // Orders (tenant)
    // =====================================================================

    function createOrder(OrderParams calldata params) external whenNotPaused nonReentrant returns (uint64 orderId) {
        orderId = _createOrder(params, 0);
        token.safeTransferFrom(msg.sender, address(this), params.deposit);
    }

    /// Same as createOrder, with an EIP-2612 permit instead of a prior approve.
    /// A permit already used (e.g. front-run) is tolerated if the allowance is there.
    function createOrderWithPermit(OrderParams calldata params, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        whenNotPaused
        nonReentrant
        returns (uint64 orderId)
    {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), params.deposit, deadline, v, r, s) {} catch {}
        orderId = _createOrder(params, 0);
        token.safeTransferFrom(msg.sender, address(this), params.deposit);
    }

    /// A student's order paid from a class pool, within the student's cap.
    function createOrderForClass(uint16 classId, OrderParams calldata params)
        external
        whenNotPaused
        nonReentrant
        returns (uint64 orderId)
    {
        orderId = _createOrder(params, classId);
        _draw(classId, msg.sender, params.deposit);
    }

    function _createOrder(OrderParams calldata params, uint16 classId) private returns (uint64 orderId) {
        if (params.gpus == 0) revert ZeroGpus();
        if (params.duration == 0) revert ZeroDuration();
        if (params.biddingWindow == 0) revert ZeroBiddingWindow();
        if (params.maxPricePerGpuHour == 0) revert ZeroPrice();
        if (params.deposit == 0) revert ZeroAmount();
        orderId = ++orderCount;
        uint40 biddingEndsAt = uint40(block.timestamp) + params.biddingWindow;
        _orders[orderId] = Order({
            tenant: msg.sender,
            maxPricePerGpuHour: params.maxPricePerGpuHour,
            classId: classId,
            gpus: params.gpus,
            gpusLeased: 0,
            duration: params.duration,
            biddingEndsAt: biddingEndsAt,
            open: true,
            escrow: params.deposit
        });
        emit OrderCreated(
            orderId,
            msg.sender,
            params.gpus,
            params.minMemoryGiB,
            params.maxPricePerGpuHour,
            params.duration,
            biddingEndsAt,
            params.deposit,
            params.tenantCertFingerprint,
            params.gpuModel,
            params.region
        );
    }

    /// Stop accepting bids and refund the escrow not allocated to a lease.
    /// Leases already made run on.
    function closeOrder(uint64 orderId) external nonReentrant {
        Order storage o = _tenantOrder(orderId);
        if (!o.open) revert OrderNotOpen(orderId);
        uint128 refund = o.escrow;
        o.open = false;
        o.escrow = 0;
        _refund(msg.sender, o.classId, refund);
        emit OrderClosed(orderId, refund);
    }

    /// Accept bids of one order; each becomes a lease funded from the order's
    /// escrow with what its full duration costs (or what is left).
    function acceptBids(uint64 orderId, uint256[] calldata bidIds) external whenNotPaused returns (uint256) {
        Order storage o = _tenantOrder(orderId);
        if (!o.open) revert OrderNotOpen(orderId);
        uint16 gpusLeased = o.gpusLeased;
        uint128 escrow = o.escrow;
        uint40 startedAt = uint40(block.timestamp);
        uint40 endsAt = startedAt + o.duration;
        for (uint256 i = 0; i < bidIds.length; ++i) {
            uint256 bidId = bidIds[i];
            Deal storage d = _deals[bidId];
            if (d.status != DealStatus.Bid) {
                if (d.status == DealStatus.None) revert BidNotFound(bidId);
                revert BidNotLive(bidId);
            }
            if (d.orderId != orderId) revert BidNotForOrder(bidId, orderId);
            uint16 gpus = d.gpus;
            if (gpusLeased + gpus > o.gpus) revert TooManyGpus(gpus, o.gpus - gpusLeased);
            if (escrow == 0) revert EscrowExhausted(orderId);
            uint256 fullCost = (uint256(d.pricePerGpuHour) * gpus * o.duration) / SECONDS_PER_HOUR;
            uint104 deposit = uint104(fullCost < escrow ? fullCost : escrow);
            escrow -= deposit;
            gpusLeased += gpus;
            d.status = DealStatus.Active;
            d.startedAt = startedAt;
            d.deposit = deposit;
            d.endsAt = endsAt;
            uint32 providerId = d.providerId;
            Provider storage p = _providers[providerId];
            // A provider that is unstaking has no stake to answer for a new lease.
            if (!p.active) revert ProviderInactive(providerId);
            p.openLeases += 1;
            delete bidOf[orderId][providerId];
            emit LeaseCreated(bidId, orderId, providerId, d.pricePerGpuHour, gpus, deposit, startedAt, endsAt);
        }
        o.gpusLeased = gpusLeased;
        o.escrow = escrow;
        return bidIds.length;
    }

    // =====================================================================
    // Bids (provider)
    // =====================================================================

    function placeBid(uint64 orderId, uint96 pricePerGpuHour, uint16 gpus, bytes32 certFingerprint, string calldata endpoint)
        external
        whenNotPaused
        returns (uint256 bidId)
    {
        uint32 providerId = providerIdOf[msg.sender];
        if (providerId == 0) revert NotRegistered(msg.sender);
        Provider storage p = _providers[providerId];
        if (!p.active) revert ProviderInactive(providerId);
        Order storage o = _orders[orderId];
        if (o.tenant == address(0)) revert OrderNotFound(orderId);
        if (!o.open) revert OrderNotOpen(orderId);
        if (block.timestamp >= o.biddingEndsAt) revert BiddingClosed(orderId, o.biddingEndsAt);
        if (gpus == 0) revert ZeroGpus();
        if (pricePerGpuHour == 0) revert ZeroPrice();
        if (pricePerGpuHour > o.maxPricePerGpuHour) revert PriceAboveMax(pricePerGpuHour, o.maxPricePerGpuHour);
        uint16 openGpus = o.gpus - o.gpusLeased;
        uint16 available = p.gpuCount < openGpus ? p.gpuCount : openGpus;
        if (gpus > available) revert TooManyGpus(gpus, available);
        uint256 existing = bidOf[orderId][providerId];
        if (existing != 0) revert DuplicateBid(orderId, existing);
        bidId = ++bidCount;
        bidOf[orderId][providerId] = bidId;
        Deal storage d = _deals[bidId];
        d.providerId = providerId;
        d.orderId = orderId;
        d.pricePerGpuHour = pricePerGpuHour;
        d.gpus = gpus;
        d.status = DealStatus.Bid;
        emit BidPlaced(bidId, orderId, providerId, pricePerGpuHour, gpus, certFingerprint, endpoint);
    }

    function withdrawBid(uint256 bidId) external {
        Deal storage d = _deals[bidId];
        if (d.status == DealStatus.None) revert BidNotFound(bidId);
        if (_providers[d.providerId].owner != msg.sender) revert NotBidProvider(bidId, msg.sender);
        if (d.status != DealStatus.Bid) revert BidNotLive(bidId);
        d.status = DealStatus.BidWithdrawn;
        delete bidOf[d.orderId][d.providerId];
        emit BidWithdrawn(bidId, d.orderId);
    }

    // =====================================================================
    // Leases
    // =====================================================================

    /// Provider takes what has accrued, once the attestation grace period is over.
    function withdraw(uint256 leaseId) external nonReentrant returns (uint104 amount) {
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active) revert LeaseNotActive(leaseId);
        address owner = _providers[d.providerId].owner;
        if (owner != msg.sender) revert NotLeaseProvider(leaseId, msg.sender);
        uint40 graceEnds = d.startedAt + attestationGrace;
        if (block.timestamp < graceEnds) revert GracePeriodActive(leaseId, graceEnds);
        amount = _accrued(d, block.timestamp) - d.withdrawn;
        if (amount == 0) revert NothingToWithdraw(leaseId);
        d.withdrawn += amount;
        uint104 fee = _payProvider(owner, amount);
        emit PaymentWithdrawn(leaseId, d.providerId, amount, fee);
    }

    /// Settle a lease: the provider gets what accrued, the tenant the rest.
    /// The tenant may close at any time (early close); the provider once it ended.
    function closeLease(uint256 leaseId) external nonReentrant {
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active) {
            if (d.status == DealStatus.None) revert LeaseNotFound(leaseId);
            revert LeaseNotActive(leaseId);
        }
        Order storage o = _orders[d.orderId];
        Provider storage p = _providers[d.providerId];
        uint40 endedAt = _effectiveEnd(d);
        if (msg.sender != o.tenant) {
            if (msg.sender != p.owner) revert NotLeaseParty(leaseId, msg.sender);
            if (block.timestamp < endedAt) revert LeaseNotEnded(leaseId, endedAt);
            // Not before the tenant has had its chance to reject the hardware.
            uint40 graceEnds = d.startedAt + attestationGrace;
            if (block.timestamp < graceEnds) revert GracePeriodActive(leaseId, graceEnds);
        }
        if (block.timestamp < endedAt) endedAt = uint40(block.timestamp);
        _settle(leaseId, d, p, o, endedAt, false);
    }

    /// Tenant closes a lease whose provider went silent: payment stops at the
    /// provider's last heartbeat, proven by the provider's own signature over it.
    function closeLeaseAtHeartbeat(uint256 leaseId, Heartbeat calldata heartbeat, bytes calldata signature)
        external
        nonReentrant
    {
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active) revert LeaseNotActive(leaseId);
        Order storage o = _orders[d.orderId];
        if (msg.sender != o.tenant) revert NotLeaseTenant(leaseId, msg.sender);
        Provider storage p = _providers[d.providerId];
        address signer = ECDSA.recover(heartbeatDigest(heartbeat), signature);
        if (signer != p.owner || heartbeat.leaseId != leaseId) revert InvalidHeartbeat(leaseId, signer);
        // Clocks differ: a heartbeat stamped ahead of this block still pays no further than now.
        uint40 endedAt = _effectiveEnd(d);
        if (block.timestamp < endedAt) endedAt = uint40(block.timestamp);
        if (heartbeat.timestamp < endedAt) endedAt = heartbeat.timestamp < d.startedAt ? d.startedAt : uint40(heartbeat.timestamp);
        _settle(leaseId, d, p, o, endedAt, true);
    }

    /// Provider commits to its execution receipts of a lease: one root, once, while the lease
    /// is active or a dispute about it may still be opened.
    function postReceiptRoot(uint256 leaseId, bytes32 root, uint32 count) external {
        Deal storage d = _deals[leaseId];
        DealStatus status = d.status;
        if (status != DealStatus.Active && status != DealStatus.Closed) {
            if (status == DealStatus.None) revert LeaseNotFound(leaseId);
            revert LeaseNotActive(leaseId);
        }
        if (_providers[d.providerId].owner != msg.sender) revert NotLeaseProvider(leaseId, msg.sender);
        if (status == DealStatus.Closed && block.timestamp > uint256(d.endsAt) + disputeWindow) {
            revert DisputeWindowOver(leaseId, d.endsAt);
        }
        if (root == 0 || count == 0) revert EmptyReceiptRoot(leaseId);
        bytes32 posted = receiptRootOf[leaseId];
        if (posted != 0) revert ReceiptRootAlreadyPosted(leaseId, posted);
        receiptRootOf[leaseId] = root;
        emit ReceiptRootPosted(leaseId, d.providerId, root, count);
    }

    /// The EIP-712 digest a provider signs for a heartbeat.
    function heartbeatDigest(Heartbeat calldata hb) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(HEARTBEAT_TYPEHASH, hb.leaseId, hb.seq, hb.timestamp, hb.gpuUtilBps))
        );
    }

    /// Pay the provider what accrued until `endedAt` (never less than it already
    /// withdrew) and refund the tenant the rest of the deposit.
    function _settle(uint256 leaseId, Deal storage d, Provider storage p, Order storage o, uint40 endedAt, bool dropped)
        private
    {
        uint104 deposit = d.deposit;
        uint104 withdrawn = d.withdrawn;
        uint104 total = _accrued(d, endedAt);
        if (total < withdrawn) total = withdrawn;
        d.status = DealStatus.Closed;
        d.endsAt = endedAt;
        d.withdrawn = total;
        p.openLeases -= 1;
        if (dropped) p.leasesDropped += 1;
        else p.leasesCompleted += 1;
        _holdStakeForDisputes(p, endedAt);
        uint104 due = total - withdrawn;
        uint104 fee = due > 0 ? _payProvider(p.owner, due) : 0;
        uint104 refund = deposit - total;
        _refund(o.tenant, o.classId, refund);
        emit LeaseClosed(leaseId, msg.sender, total, due - fee, fee, refund, endedAt);
    }

    /// Tenant adds deposit (and optionally time) to a running lease.
    function topUp(uint256 leaseId, uint104 amount, uint32 extraSeconds) external whenNotPaused nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active) revert LeaseNotActive(leaseId);
        Order storage o = _orders[d.orderId];
        if (o.tenant != msg.sender) revert NotLeaseTenant(leaseId, msg.sender);
        uint40 endedAt = _effectiveEnd(d);
        if (block.timestamp >= endedAt) revert LeaseEnded(leaseId, endedAt);
        d.deposit += amount;
        d.endsAt += extraSeconds;
        if (o.classId == 0) token.safeTransferFrom(msg.sender, address(this), amount);
        else _draw(o.classId, msg.sender, amount);
        emit LeaseToppedUp(leaseId, amount, d.deposit, d.endsAt);
    }

    /// Tenant refuses the hardware within the attestation grace period: full refund.
    function rejectLease(uint256 leaseId, bytes32 reasonHash) external nonReentrant {
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active) revert LeaseNotActive(leaseId);
        Order storage o = _orders[d.orderId];
        if (o.tenant != msg.sender) revert NotLeaseTenant(leaseId, msg.sender);
        uint40 graceEnds = d.startedAt + attestationGrace;
        if (block.timestamp >= graceEnds) revert GracePeriodOver(leaseId, graceEnds);
        // withdraw() is locked during grace, so nothing has been paid yet.
        uint104 refund = d.deposit;
        d.status = DealStatus.Rejected;
        d.endsAt = uint40(block.timestamp);
        Provider storage p = _providers[d.providerId];
        p.openLeases -= 1;
        p.leasesRejected += 1;
        _holdStakeForDisputes(p, uint40(block.timestamp));
        _refund(o.tenant, o.classId, refund);
        emit LeaseRejected(leaseId, reasonHash, refund);
    }

    // =====================================================================
    // Classes (a sponsor's pool with per-student caps)
    // =====================================================================

    function createClass(uint128 amount) external whenNotPaused nonReentrant returns (uint16 classId) {
        classId = ++classCount;
        _classes[classId] = Class({sponsor: msg.sender, balance: amount});
        if (amount > 0) token.safeTransferFrom(msg.sender, address(this), amount);
        emit ClassCreated(classId, msg.sender, amount);
    }

    function fundClass(uint16 classId, uint128 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Class storage c = _sponsorClass(classId);
        c.balance += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit ClassFunded(classId, amount, c.balance);
    }

    function withdrawClassFunds(uint16 classId, uint128 amount) external nonReentrant {
        Class storage c = _sponsorClass(classId);
        if (amount == 0) revert ZeroAmount();
        if (amount > c.balance) revert ClassFundsLow(classId, c.balance, amount);
        c.balance -= amount;
        token.safeTransfer(msg.sender, amount);
        emit ClassWithdrawn(classId, amount, c.balance);
    }

    /// The most a student may have drawn at once (deposits in use plus what leases cost).
    function setAllowance(uint16 classId, address student, uint128 cap) external {
        _sponsorClass(classId);
        if (student == address(0)) revert ZeroAddress();
        _allowances[classId][student].cap = cap;
        emit AllowanceSet(classId, student, cap);
    }

    function _sponsorClass(uint16 classId) private view returns (Class storage c) {
        c = _classes[classId];
        if (c.sponsor == address(0)) revert ClassNotFound(classId);
        if (c.sponsor != msg.sender) revert NotClassSponsor(classId, msg.sender);
    }

    function _draw(uint16 classId, address student, uint128 amount) private {
        Class storage c = _classes[classId];
        if (c.sponsor == address(0)) revert ClassNotFound(classId);
        Allowance storage a = _allowances[classId][student];
        uint128 remaining = a.cap > a.drawn ? a.cap - a.drawn : 0;
        if (amount > remaining) revert AllowanceExceeded(classId, student, remaining, amount);
        if (amount > c.balance) revert ClassFundsLow(classId, c.balance, amount);
        c.balance -= amount;
        a.drawn += amount;
        emit ClassDrawn(classId, student, amount, a.drawn);
    }

    /// Money coming back to a tenant: to its wallet, or to the class pool it was drawn from.
    function _refund(address tenant, uint16 classId, uint256 amount) private {
        if (amount == 0) return;
        if (classId == 0) {
            token.safeTransfer(tenant, amount);
            return;
        }
        _classes[classId].balance += uint128(amount);
        Allowance storage a = _allowances[classId][tenant];
        a.drawn = a.drawn > amount ? a.drawn - uint128(amount) : 0;
        emit ClassRefunded(classId, tenant, uint128(amount), a.drawn);
    }

    // =====================================================================
    // Disputes
    // =====================================================================

    /// Tenant disputes a lease's work, while it runs or within `disputeWindow` after it closed.
    function openDispute(uint256 leaseId, bytes32 evidenceHash) external {
        Deal storage d = _deals[leaseId];
        if (d.status != DealStatus.Active && d.status != DealStatus.Closed) revert LeaseNotActive(leaseId);
        if (_orders[d.orderId].tenant != msg.sender) revert NotLeaseTenant(leaseId, msg.sender);
        if (d.disputed) revert DisputeAlreadyOpen(leaseId);
        if (d.status == DealStatus.Closed && block.timestamp > uint256(d.endsAt) + disputeWindow) {
            revert DisputeWindowOver(leaseId, d.endsAt);
        }
        d.disputed = true;
        _providers[d.providerId].openDisputes += 1;
        emit DisputeOpened(leaseId, evidenceHash);
    }

    /// Arbiter decides; when the provider is at fault, up to `slashAmount` of its stake goes to the tenant.
    function resolveDispute(uint256 leaseId, bool providerAtFault, uint128 slashAmount)
        external
        onlyRole(ARBITER_ROLE)
        nonReentrant
    {
        Deal storage d = _deals[leaseId];
        if (!d.disputed) revert NoOpenDispute(leaseId);
        d.disputed = false;
        Provider storage p = _providers[d.providerId];
        p.openDisputes -= 1;
        uint128 slashed = 0;
        if (providerAtFault) {
            p.disputesLost += 1;
            slashed = slashAmount < p.stake ? slashAmount : p.stake;
            p.stake -= slashed;
            Order storage o = _orders[d.orderId];
            if (o.classId != 0) _classes[o.classId].balance += slashed; // the sponsor paid: the pool is made whole
            else if (slashed > 0) token.safeTransfer(o.tenant, slashed);
        }
        emit DisputeResolved(leaseId, providerAtFault, slashed);
    }

    // =====================================================================
    // Views
    // =====================================================================

    function getProvider(uint32 providerId) external view returns (Provider memory) {
        return _providers[providerId];
    }

    function getOrder(uint64 orderId) external view returns (Order memory) {
        return _orders[orderId];
    }

    function getDeal(uint256 dealId) external view returns (Deal memory) {
        return _deals[dealId];
    }

    function getClass(uint16 classId) external view returns (Class memory) {
        return _classes[classId];
    }

    function allowanceOf(uint16 classId, address student) external view returns (Allowance memory) {
        return _allowances[classId][student];
    }

    /// Gross amount accrued to the provider so far (fee included), capped by the deposit.
    function accrued(uint256 leaseId) external view returns (uint104) {
        Deal storage d = _deals[leaseId];
        if (d.status == DealStatus.Bid || d.status == DealStatus.BidWithdrawn || d.status == DealStatus.None) return 0;
        if (d.status == DealStatus.Rejected) return 0;
        return _accrued(d, block.timestamp);
    }

    /// When the lease stops accruing: its end, or the moment its deposit runs dry.
    function effectiveEnd(uint256 leaseId) external view returns (uint40) {
        return _effectiveEnd(_deals[leaseId]);
    }

    // =====================================================================
    // Internals
    // =====================================================================

    function _accrued(Deal storage d, uint256 time) private view returns (uint104) {
        uint256 end = time < d.endsAt ? time : d.endsAt;
        if (end <= d.startedAt) return 0;
        uint256 owed = (uint256(d.pricePerGpuHour) * d.gpus * (end - d.startedAt)) / SECONDS_PER_HOUR;
        return owed < d.deposit ? uint104(owed) : d.deposit;
    }

    function _effectiveEnd(Deal storage d) private view returns (uint40) {
        // First second at which price*gpus*t/3600 >= deposit, i.e. the deposit is spent.
        uint256 rate = uint256(d.pricePerGpuHour) * d.gpus;
        if (rate == 0) return d.endsAt;
        uint256 drySeconds = (uint256(d.deposit) * SECONDS_PER_HOUR + rate - 1) / rate;
        uint256 dryAt = uint256(d.startedAt) + drySeconds;
        return dryAt < d.endsAt ? uint40(dryAt) : d.endsAt;
    }

    /// A lease of an unstaking provider was settled: keep its stake until the tenant's
    /// dispute window (counted from the lease's end) is over. Only unstaking providers pay for this.
    function _holdStakeForDisputes(Provider storage p, uint40 endedAt) private {
        if (p.active) return;
        uint40 until = endedAt + disputeWindow;
        if (p.unstakeReadyAt != 0 && p.unstakeReadyAt < until) p.unstakeReadyAt = until;
    }

    function _payProvider(address owner, uint104 gross) private returns (uint104 fee) {
        fee = uint104((uint256(gross) * feeBps) / 10_000);
        token.safeTransfer(owner, gross - fee);
        if (fee > 0) token.safeTransfer(treasury, fee);
    }

    function _tenantOrder(uint64 orderId) private view returns (Order storage o) {
        o = _orders[orderId];
        if (o.tenant == address(0)) revert OrderNotFound(orderId);
        if (o.tenant != msg.sender) revert NotOrderTenant(orderId, msg.sender);
    }

    function _callerProviderId() private view returns (uint32 providerId) {
        providerId = providerIdOf[msg.sender];
        if (providerId == 0) revert NotRegistered(msg.sender);
    }
}
